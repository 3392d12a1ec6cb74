"""Google's attestation status list: parsing, normalization, the shipped snapshot."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtls_proxy.attestation.status import (
    StatusList,
    StatusListError,
    load_status_file,
    normalize_serial,
    parse_status_list,
    shipped_status_list,
)


def test_status_list_errors_name_the_file_and_key():
    with pytest.raises(StatusListError, match=r"^s.json: entries: expected an object under the key 'entries'$"):
        parse_status_list("{}", "s.json")
    with pytest.raises(StatusListError, match=r"^s.json: entries.ab.status: expected one of REVOKED, SUSPENDED$"):
        parse_status_list('{"entries": {"ab": {"status": "FINE"}}}', "s.json")
    with pytest.raises(StatusListError, match=r"^s.json: entries.xyz: the key is not a hex serial$"):
        parse_status_list('{"entries": {"xyz": {"status": "REVOKED"}}}', "s.json")
    with pytest.raises(StatusListError, match=r"^s.json: not JSON: "):
        parse_status_list("{", "s.json")


def test_serials_are_normalized_like_google_writes_them():
    assert normalize_serial("00C35747A084470C3135AEEFE2B8D40CD6") == "c35747a084470c3135aeefe2b8d40cd6"
    with pytest.raises(ValueError, match="not a hex serial"):
        normalize_serial("xyz")


def test_the_shipped_snapshot_is_google_s_documented_example():
    shipped = shipped_status_list()
    assert dict(shipped.entries) == {"2c8cdddfd5e03bfc": "REVOKED", "c8966fcb2fbb0d7a": "SUSPENDED"}
    assert shipped.status_of("0C8966FCB2FBB0D7A") == "SUSPENDED"
    assert shipped.status_of("1") is None


def test_a_configured_file_overrides_and_extends(tmp_path: Path):
    path = tmp_path / "status.json"
    path.write_text('{"entries": {"c8966fcb2fbb0d7a": {"status": "REVOKED"}, "abc": {"status": "SUSPENDED"}}}')
    merged = shipped_status_list().merged(load_status_file(path))
    assert dict(merged.entries) == {"2c8cdddfd5e03bfc": "REVOKED", "c8966fcb2fbb0d7a": "REVOKED", "abc": "SUSPENDED"}
    with pytest.raises(StatusListError, match=r"nope.json: cannot read"):
        load_status_file(tmp_path / "nope.json")
    assert StatusList().status_of("abc") is None
