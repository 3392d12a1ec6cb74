"""The config loader: the documented example is complete and valid; values convert as documented."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from mtls_proxy.config import (
    AdminSettings,
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
                "admin": AdminSettings, "reload": ReloadSettings}
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
