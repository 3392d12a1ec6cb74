"""Reload on file changes, no SIGHUP: ``--watch`` and ``reload: {watch: true}``.

Revocation is the case that matters: a new CRL written next to the old one and moved over it
(``os.replace``, what any careful writer does), and Kubernetes' way of updating a mounted
Secret (a new timestamped directory, then an atomic swap of the ``..data`` symlink, the file
names never change). A revoked certificate must be refused on its next new connection within
2 seconds; a bystander keeps working; a broken update is refused and the old state kept.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.pki import ClientFiles, TestPki
from tests.support.proxy import CliProxyProcess, start_cli_proxy
from tests.support.tlsclient import outcome

REVOCATION_DEADLINE = 2.0


def time_until_refused(proxy: CliProxyProcess, pki: TestPki, client: ClientFiles, since: float,
                       deadline: float = REVOCATION_DEADLINE + 1.0) -> float:
    """Open new connections until one is refused; seconds from ``since``.

    Refused means at the TLS handshake, or, for a connection whose handshake the old state had
    just accepted when the reload landed, 403 on its request (judged by the new revocations).
    """
    ctx = pki.client_context(client)
    while True:
        result = outcome(proxy.port, ctx)
        now = time.monotonic()
        if result.startswith("tls:") or result == "http:403":
            return now - since
        assert result == "http:200", result
        if now - since > deadline:
            raise AssertionError(f"still admitted {now - since:.2f}s after the CRL changed")
        time.sleep(0.02)


def assert_revoked_everywhere(proxy: CliProxyProcess, pki: TestPki, revoked: ClientFiles, ok: ClientFiles) -> None:
    """10 new connections each (spread over every worker): the revoked one never gets in, the other always."""
    for _ in range(10):
        assert outcome(proxy.port, pki.client_context(revoked)).startswith("tls:")
        assert outcome(proxy.port, pki.client_context(ok)) == "http:200"


def replace_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def handshake_reason_logged(proxy: CliProxyProcess, mark: int) -> None:
    proxy.wait_for_log(r"tls handshake failed: client=127\.0\.0\.1 reason=cert_revoked", 5, start=mark)


# --- a plain directory: os.replace of the CRL ---------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_replaced_crl_revokes_within_2s_without_sighup(proxies, pki, tmp_path, workers):
    # everything is issued before the proxy starts: nothing but the CRL changes in a watched directory
    victim = pki.client(f"watch-victim-{workers}")
    bystander = pki.client(f"watch-bystander-{workers}")
    empty = pki.crl(f"watch-empty-{workers}.pem", []).read_bytes()
    revoking = pki.crl(f"watch-revoking-{workers}.pem", [victim]).read_bytes()
    empty_again = pki.crl(f"watch-empty-again-{workers}.pem", []).read_bytes()
    certs = tmp_path / "certs"
    certs.mkdir()
    crl = certs / "crl.pem"
    crl.write_bytes(empty)
    cfg = proxies.config(tls={"crl": str(crl)})
    args = ("--watch",) if workers == 1 else ("--watch", "--workers", "2")
    ready = (r"watching .* for changes",) + ((r"worker 0 ready", r"worker 1 ready") if workers == 2 else ())
    proxy = start_cli_proxy(proxies, cfg, args, ready)
    assert outcome(proxy.port, pki.client_context(victim)) == "http:200"

    time.sleep(0.3)  # quiet: no event left over from start-up
    mark = proxy.log_count()
    t0 = time.monotonic()
    replace_file(crl, revoking)
    elapsed = time_until_refused(proxy, pki, victim, t0)
    print(f"revoked on a new connection {elapsed:.3f}s after the change")
    assert elapsed < REVOCATION_DEADLINE, elapsed
    assert_revoked_everywhere(proxy, pki, victim, bystander)
    handshake_reason_logged(proxy, mark)
    proxy.wait_for_log(r"file change detected: reloading", 1, start=mark)
    if workers == 2:
        proxy.wait_for_log(r"reload validated: forwarded SIGHUP to 2 worker\(s\)", 1, start=mark)

    # a broken update is refused (logged) and the revocation stays in force
    mark = proxy.log_count()
    replace_file(crl, b"-----BEGIN X509 CRL-----\nnot a crl\n-----END X509 CRL-----\n")
    proxy.wait_for_log(r"reload failed", 3, start=mark)
    proxy.wait_for_log(r"^  tls\.crl: .*/certs/crl\.pem: not a PEM CRL$", 1, start=mark)
    assert_revoked_everywhere(proxy, pki, victim, bystander)
    # and the watcher still works afterwards: un-revoke
    mark = proxy.log_count()
    replace_file(crl, empty_again)
    proxy.wait_for_log(r"reloaded: generation", 3, start=mark)
    deadline = time.monotonic() + 3
    while outcome(proxy.port, pki.client_context(victim)) != "http:200":
        assert time.monotonic() < deadline, "never admitted again after the CRL was cleared"
        time.sleep(0.05)
    proxy.terminate()
    assert proxy.wait(15) == 0


# --- Kubernetes: files behind the ..data symlink, swapped atomically -------------------------------------------------


class ProjectedVolume:
    """A directory laid out like a kubelet-updated Secret/ConfigMap/projected volume.

    ``dir/..2026_<n>/<path>`` holds the data, ``dir/..data -> ..2026_<n>`` and each top-level
    entry is a symlink through ``..data``: ``dir/crl.pem -> ..data/crl.pem`` for a Secret's key,
    ``dir/crl -> ..data/crl`` for a projected item ``path: crl/crl.pem``. ``update`` writes a new
    timestamped directory, points a fresh symlink at it and ``os.replace``s it over ``..data`` (one
    atomic rename); ``cleanup`` then removes the old directory: the steps of the kubelet's AtomicWriter.
    """

    def __init__(self, root: Path, files: dict[str, bytes]) -> None:
        self.root = root
        self.generation = 0
        root.mkdir(parents=True)
        current = self._write(files)
        os.symlink(current, root / "..data")
        for top in sorted({name.split("/", 1)[0] for name in files}):
            os.symlink(f"..data/{top}", root / top)

    def _write(self, files: dict[str, bytes]) -> str:
        self.generation += 1
        name = f"..2026_01_01_00_00_{self.generation:02d}.{os.getpid()}"
        for fname, data in files.items():
            target = self.root / name / fname
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return name

    def update(self, files: dict[str, bytes]) -> str:
        """Write and swap; returns the old directory, for :meth:`cleanup` (the kubelet does it right after)."""
        old = os.readlink(self.root / "..data")
        new = self._write(files)
        os.symlink(new, self.root / "..data_tmp")
        os.replace(self.root / "..data_tmp", self.root / "..data")
        return old

    def cleanup(self, old: str) -> None:
        shutil.rmtree(self.root / old)

    def path(self, name: str) -> str:
        return str(self.root / name)


#: secret-per-volume: each Secret mounted on its own (keys at the top); projected: the one volume of
#: deploy/kubernetes/deployment.yaml (items at server/tls.crt, client-ca/ca.crt, crl/crl.pem...)
LAYOUTS = {
    "secret": {"cert": "tls.crt", "key": "tls.key", "client_ca": "ca.crt", "crl": "crl.pem",
               "signing_key_file": "identity.key"},
    "projected": {"cert": "server/tls.crt", "key": "server/tls.key", "client_ca": "client-ca/ca.crt",
                  "crl": "crl/crl.pem", "signing_key_file": "identity/identity.key"},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("workers", [1, 2])
def test_kubernetes_secret_update_revokes_within_2s(proxies, pki, tmp_path, workers, layout):
    """Certificates, CA and CRL in Secret volume(s), the config in a ConfigMap volume with reload.watch."""
    names = LAYOUTS[layout]
    tag = f"{layout}-{workers}"
    victim = pki.client(f"k8s-victim-{tag}")
    bystander = pki.client(f"k8s-bystander-{tag}")
    revoking = pki.crl(f"k8s-revoking-{tag}.pem", [victim]).read_bytes()
    secret_files = {
        names["cert"]: pki.server_pem.read_bytes(),
        names["key"]: pki.server_key.read_bytes(),
        names["client_ca"]: pki.ca_pem.read_bytes(),
        names["crl"]: pki.crl(f"k8s-empty-{tag}.pem", []).read_bytes(),
        names["signing_key_file"]: pki.signing_key.read_bytes(),
    }
    # every file the proxy reads lives in the two volumes: nothing else is watched
    secret = ProjectedVolume(tmp_path / "secret", secret_files)
    cfg: dict[str, Any] = proxies.config(
        tls={k: secret.path(names[k]) for k in ("cert", "key", "client_ca", "crl")},
        identity={"signing_key_file": secret.path(names["signing_key_file"])},
        reload={"watch": True},
    )
    configmap = ProjectedVolume(tmp_path / "config", {"config.yaml": yaml.safe_dump(cfg).encode()})
    ready = (r"watching .* for changes",) + ((r"worker 0 ready", r"worker 1 ready") if workers == 2 else ())
    args = () if workers == 1 else ("--workers", "2")
    proxy = CliProxyProcess(Path(configmap.path("config.yaml")), int(cfg["listen"].rsplit(":", 1)[1]), args, ready)
    proxies.started.append(proxy)
    watched = proxy.wait_for_log(r"watching (.*) for changes").group(1).split(", ")
    # the directories where ..data is swapped, whatever the layout
    assert str(configmap.root) in watched and str(secret.root) in watched, watched
    assert all(w.startswith((str(secret.root), str(configmap.root))) for w in watched), watched
    assert outcome(proxy.port, pki.client_context(victim)) == "http:200"

    time.sleep(0.3)  # quiet: no event left over from start-up
    mark = proxy.log_count()
    t0 = time.monotonic()
    old = secret.update({**secret_files, names["crl"]: revoking})
    # the swap alone is detected: the old directory is still there (the kubelet removes it next)
    elapsed = time_until_refused(proxy, pki, victim, t0)
    print(f"revoked on a new connection {elapsed:.3f}s after the change")
    assert elapsed < REVOCATION_DEADLINE, elapsed
    assert_revoked_everywhere(proxy, pki, victim, bystander)
    handshake_reason_logged(proxy, mark)
    secret.cleanup(old)

    # a second rollout, of the ConfigMap this time (the watcher re-planned after the first swap):
    # a policy change that denies /api/slow
    cfg["policy"] = {"rules": [{"name": "no-slow", "paths": ["/api/slow"], "action": "deny"},
                               {"name": "all", "paths": ["/"], "clients": "any"}]}
    mark = proxy.log_count()
    configmap.cleanup(configmap.update({"config.yaml": yaml.safe_dump(cfg).encode()}))
    ctx = pki.client_context(bystander)
    deadline = time.monotonic() + REVOCATION_DEADLINE
    while proxy.request(ctx, "GET", "/api/slow?seconds=0", headers={"Connection": "close"})[0] != 403:
        assert time.monotonic() < deadline, "the ConfigMap update was not applied"
        time.sleep(0.05)
    proxy.wait_for_log(r"reloaded: generation", 1, start=mark)
    proxy.terminate()
    assert proxy.wait(15) == 0
