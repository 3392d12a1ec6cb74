"""The config loader: the documented example is complete and valid; values convert as documented."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from mtls_proxy.config import (
    AdminSettings,
    Http2Settings,
    IdentitySettings,
    Limits,
    LoggingSettings,
    ReloadSettings,
    TlsSettings,
    parse_duration,
    parse_size,
    settings_from_mapping,
)
from mtls_proxy.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"


def test_example_documents_every_setting():
    raw = yaml.safe_load(EXAMPLE.read_text())
    sections = {"tls": TlsSettings, "identity": IdentitySettings, "limits": Limits, "logging": LoggingSettings,
                "admin": AdminSettings, "reload": ReloadSettings, "http2": Http2Settings}
    renamed = {"identity": {"enabled": "headers"}, "tls": {"crl_urls": "crl"}}  # URLs are tls.crl entries
    for section, cls in sections.items():
        for f in dataclasses.fields(cls):
            key = renamed.get(section, {}).get(f.name, f.name)
            assert key in raw[section], f"{section}.{key} is not documented in config.example.yaml"


def test_example_loads_with_real_files(pki, tmp_path):
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["tls"].update(cert=str(pki.server_pem), key=str(pki.server_key), client_ca=[str(pki.ca_pem)],
                      crl=[str(pki.crl("example-crl.pem", []))])
    raw["policy"]["rules"][2]["clients"] = raw["policy"]["rules"][2]["clients"][:2]
    settings = settings_from_mapping(raw, tmp_path / "x.yaml")
    assert settings.limits == Limits()
    assert settings.http2 == Http2Settings()  # the documented values are the defaults
    assert settings.tls.alpn == ("h2", "http/1.1")
    assert [r.name for r in settings.policy.rules] == ["no-admin", "api", "ops"]


def test_example_placeholders_are_reported(tmp_path):
    raw = yaml.safe_load(EXAMPLE.read_text())
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(raw, tmp_path / "x.yaml")
    paths = [p.key_path for p in info.value.problems]
    assert "tls.cert" in paths and "tls.client_ca[0]" in paths
    assert "policy.rules[2].clients[2].fingerprint[0]" in paths


@pytest.mark.parametrize(("text", "value"), [(1024, 1024), ("1k", 1024), ("10M", 10 << 20), ("1GiB", 1 << 30),
                                             ("5 MB", 5 << 20), ("0", 0)])
def test_sizes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["lots", "-1", "1.5M", True, "1T"])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(("text", "value"), [(30, 30.0), (2.5, 2.5), ("500ms", 0.5), ("30s", 30.0), ("5m", 300.0)])
def test_durations(text, value):
    assert parse_duration(text) == value


@pytest.mark.parametrize("text", ["0", 0, -1, "soon", False])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_path_caps_are_limits(tmp_path):
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["limits"] = {"max_path_length": "32k", "max_path_segments": 1000}
    with pytest.raises(ConfigError) as info:  # the example's placeholders fail, the limits parse
        settings_from_mapping(raw, tmp_path / "x.yaml")
    assert not [p for p in info.value.problems if p.key_path.startswith("limits")]
    assert Limits().max_path_length == 8192 and Limits().max_path_segments == 256


@pytest.mark.parametrize(("key", "value", "message"), [
    ("max_path_length", 0, "must be positive"),
    ("max_path_length", "lots", "'lots' is not a size such as 1048576, '512k', '10M' or '1G'"),
    ("max_path_segments", 0, "must be positive"),
    ("max_path_segments", -3, "must be positive"),
])
def test_bad_path_caps_name_the_key(tmp_path, key, value, message):
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["limits"] = {key: value}
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(raw, tmp_path / "x.yaml")
    assert [p.message for p in info.value.problems if p.key_path == f"limits.{key}"] == [message]


# --- tls.client_certs and tls.x509_strict ---------------------------------------------------------------------


def _tls_config(pki, tmp_path: Path, **tls):
    raw = {"listen": "127.0.0.1:8443", "upstream": "http://127.0.0.1:8000",
           "tls": {"cert": str(pki.server_pem), "key": str(pki.server_key), **tls},
           "policy": {"rules": [{"name": "all", "paths": ["/"], "clients": "any"}]}}
    return settings_from_mapping(raw, tmp_path / "x.yaml")


def _problems(pki, tmp_path: Path, **tls) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _tls_config(pki, tmp_path, **tls)
    return [f"{p.key_path}: {p.message}" for p in info.value.problems]


def test_client_certs_instead_of_client_ca_pem_or_der(pki, tmp_path):
    from cryptography.hazmat.primitives.serialization import Encoding

    from mtls_proxy.pki import x509 as X

    app = X.issue_certificate("app", ekus=None)
    (tmp_path / "app.der").write_bytes(app.cert.public_bytes(Encoding.DER))
    (tmp_path / "app.pem").write_bytes(app.cert_pem())
    s = _tls_config(pki, tmp_path, client_certs=["app.der", "app.pem"])  # relative to the config's directory
    assert s.tls.client_ca == () and s.tls.client_certs == (tmp_path / "app.der", tmp_path / "app.pem")
    assert s.tls.x509_strict is True
    assert tmp_path / "app.der" in s.watched_files()


def test_client_ca_or_client_certs_is_required(pki, tmp_path):
    assert _problems(pki, tmp_path) == [
        "tls.client_ca: required (a client CA), unless tls.client_certs pins client certificates"]
    assert _problems(pki, tmp_path, client_certs=[]) == [
        "tls.client_ca: required (a client CA), unless tls.client_certs pins client certificates"]


def test_bad_client_certs(pki, tmp_path):
    from mtls_proxy.pki import x509 as X

    (tmp_path / "junk.pem").write_text("junk")
    (tmp_path / "ca.pem").write_bytes(X.issue_ca("pinned CA").cert_pem())
    (tmp_path / "app.pem").write_bytes(X.issue_certificate("app", ekus=None).cert_pem())
    problems = _problems(pki, tmp_path, client_certs=["junk.pem", "ca.pem", "missing.pem"], x509_strict="yes")
    assert problems == [
        f"tls.client_certs[2]: {tmp_path / 'missing.pem'}: no such file",
        "tls.x509_strict: expected bool, got str",
        f"tls.client_certs[0]: {tmp_path / 'junk.pem'}: no certificate could be read (PEM, or DER as keytool "
        "-exportcert writes)",
        f"tls.client_certs[1]: {tmp_path / 'ca.pem'}: 'CN=pinned CA' is a CA certificate (basicConstraints "
        "CA:TRUE): put CAs in tls.client_ca, pin only leaves",
    ]
    crl = str(pki.crl("pins-crl.pem", []))
    assert _problems(pki, tmp_path, client_ca=str(pki.ca_pem), client_certs="app.pem", crl=crl) == [
        "tls.client_certs: 'CN=app': with tls.crl set, OpenSSL wants a CRL from the issuer of every client "
        "certificate and none is from 'CN=app' (a self-signed certificate has none): every handshake with it would "
        "fail (crl_missing); remove tls.crl while certificates are pinned (refuse one with policy.deny or by "
        "unpinning it)"]


def test_a_leaf_as_client_ca_points_at_client_certs(pki, tmp_path):
    (tmp_path / "leaf.pem").write_bytes(pki.client("cfg-leaf").issued.cert_pem())
    assert _problems(pki, tmp_path, client_ca="leaf.pem") == [
        f"tls.client_ca: {tmp_path / 'leaf.pem'}: holds no CA certificate (basicConstraints CA:TRUE); to trust "
        "exactly this certificate (a self-signed app certificate, say), list it in tls.client_certs instead"]


def _minimal(pki, **extra):  # type: ignore[no-untyped-def]
    return {"listen": "127.0.0.1:0", "upstream": "http://127.0.0.1:8000",
            "tls": {"cert": str(pki.server_pem), "key": str(pki.server_key), "client_ca": str(pki.ca_pem),
                    **extra.pop("tls", {})},
            "policy": {"rules": [{"name": "all", "paths": ["/"], "clients": "any"}]}, **extra}


@pytest.mark.parametrize(("alpn", "expected"), [(["http/1.1"], ("http/1.1",)), ("h2", ("h2",)),
                                                 (["http/1.1", "h2"], ("http/1.1", "h2"))])
def test_alpn(pki, tmp_path, alpn, expected):
    settings = settings_from_mapping(_minimal(pki, tls={"alpn": alpn}), tmp_path / "x.yaml")
    assert settings.tls.alpn == expected


@pytest.mark.parametrize("alpn", [[], ["h2", "h2"], ["h2c"], ["spdy/3"], 2])
def test_bad_alpn_names_the_key(pki, tmp_path, alpn):
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(_minimal(pki, tls={"alpn": alpn}), tmp_path / "x.yaml")
    assert [p.key_path for p in info.value.problems] == ["tls.alpn"]


def test_http2_values_convert(pki, tmp_path):
    raw = _minimal(pki, http2={"initial_window_size": "1M", "max_concurrent_streams": 7, "zero_window_timeout": "5s"})
    s = settings_from_mapping(raw, tmp_path / "x.yaml").http2
    assert (s.initial_window_size, s.max_concurrent_streams, s.zero_window_timeout) == (1 << 20, 7, 5.0)


@pytest.mark.parametrize(("key", "value"), [("initial_window_size", "1k"), ("initial_window_size", "2G"),
                                            ("max_concurrent_streams", 0), ("max_continuation_frames", 64),
                                            ("max_pings_per_second", "many"), ("zero_window_timeout", 0),
                                            ("push", True)])
def test_bad_http2_values_name_the_key(pki, tmp_path, key, value):
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(_minimal(pki, http2={key: value}), tmp_path / "x.yaml")
    assert [p.key_path for p in info.value.problems] == [f"http2.{key}"]
