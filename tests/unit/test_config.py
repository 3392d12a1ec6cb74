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
    renamed = {"identity": {"enabled": "headers"}}
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
