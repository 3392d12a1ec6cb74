"""deploy/kubernetes/: every manifest parses, and the pieces refer to each other correctly.

No cluster here: what can be checked without one is checked for real. The config inside the
ConfigMap is loaded by mtls-proxy's own loader with real files at the paths the pod would see,
and then served by the real proxy with its probes answered on the admin port the manifests use.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtls_proxy.config import parse_duration, settings_from_mapping
from tests.support.proxy import free_port, start_cli_proxy

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
API_VERSIONS = {
    "Deployment": "apps/v1",
    "Service": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "PodDisruptionBudget": "policy/v1",
}


def load_manifests() -> dict[tuple[str, str], dict[str, Any]]:
    objs: dict[tuple[str, str], dict[str, Any]] = {}
    for f in sorted(K8S.glob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(f.read_text()):
            if doc is None:
                continue
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objs, f"{key} defined twice"
            objs[key] = doc
    return objs


OBJS = load_manifests()


def one(kind: str) -> dict[str, Any]:
    found = [o for (k, _), o in OBJS.items() if k == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


DEPLOYMENT = one("Deployment")
POD = DEPLOYMENT["spec"]["template"]["spec"]
CONTAINER = next(c for c in POD["containers"] if c["name"] == "mtls-proxy")
CONFIGMAP = one("ConfigMap")
CONFIG = yaml.safe_load(CONFIGMAP["data"]["config.yaml"])


def container_port(name_or_number: str | int) -> int:
    for p in CONTAINER["ports"]:
        if name_or_number in (p["name"], p["containerPort"]):
            return int(p["containerPort"])
    raise AssertionError(f"no container port {name_or_number!r}")


def host_port(value: str) -> tuple[str, int]:
    host, _, port = str(value).rpartition(":")
    return host, int(port)


def config_path() -> str:
    args = CONTAINER["args"]
    return args[args.index("--config") + 1]


def config_files() -> dict[str, str]:
    """Every file path the config names (what reload.watch watches), by key path."""
    tls, ident = CONFIG["tls"], CONFIG.get("identity", {})
    files = {"tls.cert": tls["cert"], "tls.key": tls["key"]}
    for key in ("client_ca", "crl"):
        values = tls.get(key) or []
        for i, v in enumerate([values] if isinstance(values, str) else values):
            files[f"tls.{key}[{i}]"] = v
    if ident.get("signing_key_file"):
        files["identity.signing_key_file"] = ident["signing_key_file"]
    return files


def resolve_mount(path: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(volumeMount, volume, path inside the volume) for a file path in the container."""
    mounts = [m for m in CONTAINER["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mounts, f"{path} is on no volume mount"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volume = next(v for v in POD["volumes"] if v["name"] == mount["name"])
    return mount, volume, path[len(mount["mountPath"].rstrip("/")) + 1:]


def source_of(volume: dict[str, Any], inner: str) -> tuple[str, str, str]:
    """(kind, object name, data key) that provides ``inner`` in ``volume``."""
    simple = [("Secret", volume["secret"]["secretName"], volume["secret"])] if "secret" in volume else []
    simple += [("ConfigMap", volume["configMap"]["name"], volume["configMap"])] if "configMap" in volume else []
    sources = simple or [
        ("Secret", s["secret"]["name"], s["secret"]) if "secret" in s else ("ConfigMap", s["configMap"]["name"],
                                                                            s["configMap"])
        for s in volume.get("projected", {}).get("sources", [])
    ]
    for kind, name, spec in sources:
        items = spec.get("items")
        if items is None:
            obj = OBJS.get((kind, name))
            keys = set((obj or {}).get("data", {})) | set((obj or {}).get("stringData", {}))
            if inner in keys:
                return kind, name, inner
        else:
            for item in items:
                if item["path"] == inner:
                    return kind, name, item["key"]
    raise AssertionError(f"nothing in volume {volume['name']} provides {inner}")


# --- shape ------------------------------------------------------------------------------------------------------------


def test_every_manifest_parses_with_the_expected_kinds():
    kinds = sorted({k for k, _ in OBJS})
    assert kinds == sorted(API_VERSIONS)
    for (kind, name), obj in OBJS.items():
        assert obj["apiVersion"] == API_VERSIONS[kind], (kind, name)
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
    secrets = {n for k, n in OBJS if k == "Secret"}
    assert {"mtls-proxy-server-tls", "mtls-proxy-client-ca", "mtls-proxy-crl"} <= secrets
    assert OBJS[("Secret", "mtls-proxy-server-tls")]["type"] == "kubernetes.io/tls"


def test_kustomization_lists_every_manifest_but_the_secret_templates():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = sorted(f.name for f in K8S.glob("*.yaml") if f.name != "kustomization.yaml")
    assert sorted(kust["resources"]) == [f for f in files if f != "secrets.yaml"]
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return  # the structure above is the check; the build below needs kubectl (kustomize built in)
    built = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    rendered = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(built.stdout) if d}
    assert rendered == {k for k in OBJS if k[0] != "Secret"}


# --- cross-references ----------------------------------------------------------------------------------------------


def test_selectors_match_the_pod_labels():
    labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    match = DEPLOYMENT["spec"]["selector"]["matchLabels"]
    assert match and match.items() <= labels.items()
    service = one("Service")
    assert service["spec"]["selector"] == match
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == match
    for c in POD.get("topologySpreadConstraints", []):
        assert c["labelSelector"]["matchLabels"] == match
    hpa = one("HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", DEPLOYMENT["metadata"]["name"])


def test_ports_follow_the_config_and_the_service_is_l4_passthrough():
    listen = CONFIG["listen"]
    assert isinstance(listen, str), "one listen address"
    assert host_port(listen) == ("0.0.0.0", container_port("https"))
    assert host_port(CONFIG["admin"]["listen"]) == ("0.0.0.0", container_port("admin"))  # probes reach the pod IP
    service = one("Service")
    assert service["spec"]["type"] == "LoadBalancer"
    (port,) = service["spec"]["ports"]  # the admin port stays private
    assert (port["protocol"], port["port"], container_port(port["targetPort"])) == ("TCP", 443, 8443)
    # pure L4: no annotation that would make the load balancer terminate TLS or speak HTTP
    annotations = " ".join(f"{k}={v}" for k, v in service["metadata"].get("annotations", {}).items()).lower()
    assert not re.search(r"ssl-cert|backend-protocol=(http|https)|tls-cert|app-protocol", annotations), annotations
    assert "appProtocol" not in port


def test_probes_use_the_admin_endpoints():
    admin_port = container_port("admin")
    ready, live = CONTAINER["readinessProbe"]["httpGet"], CONTAINER["livenessProbe"]["httpGet"]
    assert (ready["path"], container_port(ready["port"])) == ("/readyz", admin_port)
    assert (live["path"], container_port(live["port"])) == ("/healthz", admin_port)
    assert ready.get("scheme", "HTTP") == "HTTP" and live.get("scheme", "HTTP") == "HTTP"


def test_shutdown_drains_within_the_grace_period():
    pre_stop = CONTAINER["lifecycle"]["preStop"]
    if "exec" in pre_stop:
        cmd = pre_stop["exec"]["command"]
        assert cmd[0] == "sleep" and len(cmd) == 2
        sleep = float(cmd[1])
    else:
        sleep = float(pre_stop["sleep"]["seconds"])
    assert sleep >= 5  # endpoint removal has to reach kube-proxy and the load balancer
    drain = parse_duration(CONFIG["limits"]["drain_timeout"])
    grace = POD["terminationGracePeriodSeconds"]
    assert grace > sleep + drain, (grace, sleep, drain)  # the kubelet's SIGKILL never cuts the drain
    rolling = DEPLOYMENT["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0


def test_scaling_and_disruption_budget_agree():
    hpa = one("HorizontalPodAutoscaler")["spec"]
    pdb = one("PodDisruptionBudget")["spec"]
    assert 2 <= hpa["minReplicas"] <= DEPLOYMENT["spec"]["replicas"] <= hpa["maxReplicas"]
    if "maxUnavailable" in pdb:
        assert 1 <= pdb["maxUnavailable"] < hpa["minReplicas"]
    else:
        assert pdb["minAvailable"] < hpa["minReplicas"]  # a node drain can always proceed
    for metric in hpa["metrics"]:
        if metric["type"] == "Resource" and metric["resource"]["target"]["type"] == "Utilization":
            assert metric["resource"]["name"] in CONTAINER["resources"]["requests"]


def test_image_user_and_arguments():
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = int(re.search(r"^USER\s+(\d+)", dockerfile, re.MULTILINE).group(1))
    assert POD["securityContext"]["runAsUser"] == uid and POD["securityContext"]["runAsNonRoot"] is True
    args = CONTAINER["args"]
    assert "command" not in CONTAINER  # keeps the image's ENTRYPOINT (mtls-proxy)
    assert args[0] == "run" and args.count("--config") == 1
    assert "auto" not in args  # --workers auto would count the node's CPUs, not the pod's limit


def test_volume_mounts_cover_every_file_and_update_in_place():
    paths = {"--config": config_path(), **config_files()}
    for what, path in paths.items():
        mount, volume, inner = resolve_mount(path)
        assert "subPath" not in mount and "subPathExpr" not in mount, f"{what}: subPath mounts are never updated"
        assert mount.get("readOnly") is True, what
        kind, name, key = source_of(volume, inner)
        obj = OBJS.get((kind, name))
        assert obj is not None, f"{what}: {kind} {name} is not in deploy/kubernetes"
        assert key in set(obj.get("data", {})) | set(obj.get("stringData", {})), f"{what}: {kind} {name} has no {key}"
    assert resolve_mount(config_path())[1]["configMap"]["name"] == CONFIGMAP["metadata"]["name"]
    assert CONFIG["reload"]["watch"] is True  # Secret and ConfigMap updates are picked up without a restart
    assert resolve_mount(config_files()["tls.crl[0]"])[0]["mountPath"] != resolve_mount(config_path())[0]["mountPath"]


# --- the config in the ConfigMap, for real ---------------------------------------------------------------------------


def _materialise(tmp_path: Path, pki: Any, upstream_url: str | None = None, listen_port: int | None = None,
                 admin_port: int | None = None) -> tuple[dict[str, Any], Path]:
    """The ConfigMap's config with each mounted path mapped under ``tmp_path`` and real files written there."""
    real = {
        "tls.cert": pki.server_pem.read_bytes(),
        "tls.key": pki.server_key.read_bytes(),
        "tls.client_ca[0]": pki.ca_pem.read_bytes(),
        "tls.crl[0]": pki.crl("k8s-config-crl.pem", []).read_bytes(),
        "identity.signing_key_file": pki.signing_key.read_bytes(),
    }
    files = config_files()
    assert set(files) == set(real)
    for key, path in files.items():
        local = tmp_path / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(real[key])
    text = CONFIGMAP["data"]["config.yaml"]
    for path in sorted(set(files.values()), key=len, reverse=True):
        text = text.replace(path, str(tmp_path / path.lstrip("/")))
    cfg = yaml.safe_load(text)
    if upstream_url:
        cfg["upstream"] = upstream_url
    if listen_port:
        cfg["listen"] = f"127.0.0.1:{listen_port}"
    if admin_port:
        cfg["admin"]["listen"] = f"127.0.0.1:{admin_port}"
    source = tmp_path / config_path().lstrip("/")
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(yaml.safe_dump(cfg))
    return cfg, source


def test_configmap_config_loads_with_real_files(tmp_path, pki):
    cfg, source = _materialise(tmp_path, pki)
    settings = settings_from_mapping(cfg, source)
    assert [str(a) for a in settings.listen] == ["0.0.0.0:8443"]
    assert str(settings.admin.listen) == "0.0.0.0:9900"
    assert settings.reload.watch is True
    assert settings.limits.drain_timeout == parse_duration(CONFIG["limits"]["drain_timeout"])
    assert settings.upstream.host is not None or settings.upstream.unix_path is not None
    watched = {str(p) for p in settings.watched_files()}
    assert watched == {str(source), *(str(tmp_path / p.lstrip("/")) for p in config_files().values())}


def test_configmap_config_serves_and_answers_the_probes(tmp_path, pki, proxies, upstream):
    """The same config run by the real proxy (addresses moved to loopback): the probes' paths answer 200."""
    port, admin = free_port(), free_port()
    cfg, _ = _materialise(tmp_path, pki, upstream.url, port, admin)
    proxy = start_cli_proxy(proxies, cfg, (), (r"watching .* for changes",))
    for probe in (CONTAINER["readinessProbe"], CONTAINER["livenessProbe"]):
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}{probe['httpGet']['path']}", timeout=5) as resp:
            assert resp.status == 200
    client = pki.client("k8s-device")
    status, _, _ = proxy.request(pki.client_context(client), "GET", "/api/echo", headers={"Connection": "close"})
    assert status == 200
    status, _, _ = proxy.request(pki.client_context(client), "GET", "/admin/", headers={"Connection": "close"})
    assert status == 403


@pytest.mark.parametrize("name", sorted(p.name for p in K8S.glob("*.yaml")))
def test_no_real_key_material_in_the_manifests(name):
    text = (K8S / name).read_text()
    assert "PRIVATE KEY-----" not in text and "BEGIN CERTIFICATE" not in text
