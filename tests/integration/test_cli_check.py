"""``mtls-proxy check`` lists every problem with its file and key path and exits 1; a good config exits 0."""

from __future__ import annotations

import subprocess
import sys

import yaml

from mtls_proxy.pki import x509 as X


def run_check(path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mtls_proxy", "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_good_config_passes(tmp_path, pki):
    cfg = tmp_path / "good.yaml"
    cfg.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:8443", "upstream": "http://127.0.0.1:8000",
        "tls": {"cert": str(pki.server_pem), "key": str(pki.server_key), "client_ca": str(pki.ca_pem)},
        "policy": {"rules": [{"name": "all", "paths": ["/"], "clients": "any"}]},
    }))
    r = run_check(cfg)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{cfg}: OK: listen 127.0.0.1:8443; upstream http://127.0.0.1:8000;")


def test_broken_config_lists_each_problem(tmp_path, pki):
    other = X.issue_server("other", None)
    wrong_key = tmp_path / "wrong.key"
    wrong_key.write_bytes(other.key_pem())
    leaf_only = tmp_path / "leaf-as-ca.pem"
    leaf_only.write_bytes(pki.server.cert_pem())
    cfg = tmp_path / "broken.yaml"
    cfg.write_text(yaml.safe_dump({
        "listen": ["127.0.0.1:99999"],
        "upstream": "ftp://x",
        "tls": {
            "cert": str(pki.server_pem),
            "key": str(wrong_key),
            "client_ca": [str(leaf_only), str(tmp_path / "missing-ca.pem")],
            "min_version": "1.0",
            "colour": "blue",
        },
        "limits": {"max_body_size": "lots", "idle_timeout": -1, "max_connections": "many"},
        "logging": {"format": "xml"},
        "policy": {"rules": [{"paths": ["/"], "clients": [{"subject": {"CNN": "x"}}]}]},
        "extra": 1,
    }))
    r = run_check(cfg)
    assert r.returncode == 1
    err = r.stderr
    expected = [
        f"{cfg}: ",
        "listen[0]: '127.0.0.1:99999' is not host:port",
        "upstream: 'ftp://x': expected 'http://host:port' or 'unix:/path/to.sock'",
        f"tls.key: {wrong_key}: does not match the certificate in {pki.server_pem}",
        f"tls.client_ca[0]: {leaf_only}: holds no CA certificate (basicConstraints CA:TRUE)",
        f"tls.client_ca[1]: {tmp_path / 'missing-ca.pem'}: no such file",
        "tls.min_version: '1.0': use '1.2' or '1.3' (TLS 1.0 and 1.1 are refused)",
        "tls.colour: unknown key",
        "limits.max_body_size: 'lots' is not a size",
        "limits.idle_timeout: a duration must be positive",
        "limits.max_connections: expected int, got str",
        "logging.format: 'xml': use text or json",
        "policy.rules[0].clients[0].subject.CNN: unknown attribute",
        "extra: unknown key",
    ]
    for line in expected:
        assert line in err, f"missing {line!r} in:\n{err}"


def test_missing_file_and_yaml_errors(tmp_path):
    r = run_check(tmp_path / "nope.yaml")
    assert r.returncode == 1
    assert f"{tmp_path / 'nope.yaml'}: no such file" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: [\n")
    r = run_check(bad)
    assert r.returncode == 1
    assert "not valid YAML at line" in r.stderr


def test_expired_crl_is_refused_at_load(tmp_path, pki):
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    crl = pki.crl("expired-crl.pem", [], this_update=now - dt.timedelta(days=10),
                  next_update=now - dt.timedelta(days=1))
    cfg = tmp_path / "crl.yaml"
    cfg.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:8443", "upstream": "http://127.0.0.1:8000",
        "tls": {"cert": str(pki.server_pem), "key": str(pki.server_key), "client_ca": str(pki.ca_pem),
                "crl": str(crl)},
        "policy": {"rules": [{"name": "all", "paths": ["/"], "clients": "any"}]},
    }))
    r = run_check(cfg)
    assert r.returncode == 1
    assert f"tls.crl: {crl}: expired (nextUpdate" in r.stderr


def test_run_refuses_to_start_on_a_bad_config(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("listen: 127.0.0.1:1\n")
    r = subprocess.run([sys.executable, "-m", "mtls_proxy", "run", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "upstream: required" in r.stderr and "tls: required" in r.stderr and "policy: required" in r.stderr


def test_shadowed_deny_rule_is_a_warning_not_an_error(tmp_path, pki):
    cfg = tmp_path / "shadowed.yaml"
    cfg.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:8443", "upstream": "http://127.0.0.1:8000",
        "tls": {"cert": str(pki.server_pem), "key": str(pki.server_key), "client_ca": str(pki.ca_pem)},
        "policy": {"rules": [
            {"name": "api", "paths": ["/api/"], "clients": "any"},
            {"name": "no-export", "methods": ["GET"], "paths": ["/api/export"], "action": "deny"},
            {"name": "no-admin", "paths": ["/admin/"], "action": "deny"},
        ]},
    }))
    r = run_check(cfg)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{cfg}: OK: ")
    assert r.stderr.splitlines() == [
        f"{cfg}: warning: policy.rules[1]: deny rule 'no-export' is unreachable: the earlier allow rule 'api' "
        "(policy.rules[0]) matches every method and path it does, and the first matching rule decides; "
        "move the deny rule above it"
    ]
