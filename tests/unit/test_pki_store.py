"""PkiStore: layout, modes, index, serials, revocation and the CRL, all-or-nothing writes.

Real keys and certificates are generated in every test; nothing is mocked.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mtls_proxy.pki import _fs
from mtls_proxy.pki.store import (
    STATUS_EXPIRED,
    STATUS_REVOKED,
    STATUS_VALID,
    CertRecord,
    Index,
    PkiError,
    PkiStore,
    parse_serial,
)
from tests.support.fs import tree_digest

PASSPHRASE = b"correct horse battery staple"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def store(tmp_path: Path) -> PkiStore:
    s = PkiStore(tmp_path / "pki")
    s.init()
    return s


@pytest.fixture
def locked_store(tmp_path: Path) -> PkiStore:
    s = PkiStore(tmp_path / "pki", passphrase=PASSPHRASE)
    s.init()
    return s


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_crl(store: PkiStore) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(store.crl_path.read_bytes())


# -- init ------------------------------------------------------------------------------


def test_init_layout_and_modes(store: PkiStore) -> None:
    d = store.directory
    assert mode(d) == 0o700
    assert mode(store.clients_dir) == 0o700
    for private in (store.ca_key_path, store.server_ca_key_path):
        assert mode(private) == 0o600, private
    for public in (store.ca_cert_path, store.server_ca_cert_path, store.crl_path, store.index_path):
        assert mode(public) == 0o644, public
    assert not list(d.glob(".*.tmp")), "temporary files left behind"
    index = store.index()
    assert (index.server_mode, index.key_type, index.crl_number, index.certs) == ("ca", "ec-p256", 1, ())


def test_init_cas_are_distinct_cas(store: PkiStore) -> None:
    client_ca = load_cert(store.ca_cert_path)
    server_ca = load_cert(store.server_ca_cert_path)
    assert client_ca.public_key() != server_ca.public_key()
    for ca in (client_ca, server_ca):
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.key_cert_sign and usage.crl_sign
        assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert "device CA" in client_ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_init_writes_an_empty_signed_crl(store: PkiStore) -> None:
    crl = load_crl(store)
    assert len(crl) == 0
    assert crl.is_signature_valid(load_cert(store.ca_cert_path).public_key())  # type: ignore[arg-type]


def test_init_self_signed_has_no_server_ca(tmp_path: Path) -> None:
    s = PkiStore(tmp_path / "pki")
    s.init(server_mode="self-signed", org="Acme")
    assert not s.server_ca_cert_path.exists() and not s.server_ca_key_path.exists()
    assert s.index().org == "Acme"


def test_init_rsa(tmp_path: Path) -> None:
    s = PkiStore(tmp_path / "pki")
    s.init(key_type="rsa-2048")
    assert isinstance(load_cert(s.ca_cert_path).public_key(), rsa.RSAPublicKey)
    issued = s.issue_client("dev").issued
    assert isinstance(issued.key, rsa.RSAPrivateKey) and issued.key.key_size == 2048


def test_init_refuses_existing_pki(store: PkiStore) -> None:
    before = tree_digest(store.directory)
    with pytest.raises(PkiError, match="already an initialised"):
        PkiStore(store.directory).init()
    assert tree_digest(store.directory) == before


def test_init_refuses_non_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(PkiError, match="not empty"):
        PkiStore(tmp_path).init()
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_init_accepts_existing_empty_dir(tmp_path: Path) -> None:
    PkiStore(tmp_path).init()
    assert (tmp_path / "index.json").is_file()


def test_init_creates_missing_parents(tmp_path: Path) -> None:
    store = PkiStore(tmp_path / "no" / "such" / "pki")
    store.init()
    assert (tmp_path / "no" / "such" / "pki" / "index.json").is_file()
    assert (tmp_path / "no" / "such" / "pki").stat().st_mode & 0o777 == 0o700


def test_init_refuses_a_parent_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(PkiError, match="is not a directory"):
        PkiStore(tmp_path / "file" / "pki").init()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key_type": "rsa-1024"}, "unknown key type"),
        ({"server_mode": "public"}, "unknown server mode"),
        ({"org": ""}, "--org"),
        ({"ca_days": 0}, "positive"),
        ({"passphrase": b""}, "empty"),
    ],
)
def test_init_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(PkiError, match=message):
        PkiStore(tmp_path / "pki").init(**kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "pki").exists()


def test_files_are_created_private_even_with_umask_zero(tmp_path: Path) -> None:
    """Keys must be *created* 0600: with umask 0 a create-then-chmod would leave them 0644 for a moment."""
    old = os.umask(0)
    try:
        s = PkiStore(tmp_path / "pki")
        s.init()
        s.issue_client("dev", p12_path=tmp_path / "dev.p12", p12_password="pw")
    finally:
        os.umask(old)
    assert mode(s.ca_key_path) == 0o600
    assert mode(s.client_key_path("dev")) == 0o600
    assert mode(tmp_path / "dev.p12") == 0o600
    assert mode(s.client_cert_path("dev")) == 0o644


# -- passphrase ------------------------------------------------------------------------


def test_passphrase_encrypts_both_ca_keys(locked_store: PkiStore) -> None:
    for path in (locked_store.ca_key_path, locked_store.server_ca_key_path):
        assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
        with pytest.raises(TypeError):
            serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert locked_store.index().ca_key_encrypted


def test_passphrase_required_and_checked(locked_store: PkiStore) -> None:
    d = locked_store.directory
    before = tree_digest(d)
    with pytest.raises(PkiError, match="encrypted"):
        PkiStore(d).issue_client("dev")
    with pytest.raises(PkiError, match="wrong CA passphrase"):
        PkiStore(d, passphrase=b"nope").issue_client("dev")
    with pytest.raises(PkiError, match="wrong CA passphrase"):
        PkiStore(d, passphrase=b"nope").write_crl()
    assert tree_digest(d) == before
    PkiStore(d, passphrase=PASSPHRASE).issue_client("dev")


def test_passphrase_on_unencrypted_pki_is_refused(store: PkiStore) -> None:
    with pytest.raises(PkiError, match="not encrypted"):
        PkiStore(store.directory, passphrase=b"x").issue_client("dev")


# -- server ----------------------------------------------------------------------------


def test_issue_server_ca_mode(store: PkiStore) -> None:
    issued = store.issue_server(dns=["api.example.com", "localhost"], ips=["127.0.0.1"], days=30)
    chain = x509.load_pem_x509_certificates(store.server_cert_path.read_bytes())
    server_ca = load_cert(store.server_ca_cert_path)
    assert chain == [issued.cert, server_ca], "server.pem must be leaf + server CA"
    issued.cert.verify_directly_issued_by(server_ca)
    eku = issued.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = issued.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["api.example.com", "localhost"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert mode(store.server_key_path) == 0o600
    assert store.index().server is not None
    assert store.index().server.dns == ("api.example.com", "localhost")  # type: ignore[union-attr]


def test_issue_server_self_signed(tmp_path: Path) -> None:
    s = PkiStore(tmp_path / "pki")
    s.init(server_mode="self-signed")
    issued = s.issue_server(dns=["localhost"])
    assert issued.cert.issuer == issued.cert.subject
    assert x509.load_pem_x509_certificates(s.server_cert_path.read_bytes()) == [issued.cert]


def test_issue_server_reuse_key_keeps_the_pin(store: PkiStore) -> None:
    first = store.issue_server(dns=["localhost"])
    again = store.issue_server(dns=["localhost"], reuse_key=True)
    fresh = store.issue_server(dns=["localhost"])
    assert again.cert.public_key() == first.cert.public_key()
    assert fresh.cert.public_key() != first.cert.public_key()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "at least one"),
        ({"dns": ["bad_name!"]}, "invalid DNS"),
        ({"dns": ["1.2.3.4"]}, "invalid DNS"),
        ({"ips": ["300.1.1.1"]}, "invalid IP"),
        ({"dns": ["x.test"], "days": 0}, "positive"),
        ({"dns": ["x.test"], "days": 10 * 365}, "outlive"),
        ({"dns": ["x.test"], "reuse_key": True}, "does not exist"),
    ],
)
def test_issue_server_rejects(store: PkiStore, kwargs: dict[str, object], message: str) -> None:
    before = tree_digest(store.directory)
    with pytest.raises(PkiError, match=message):
        store.issue_server(**kwargs)  # type: ignore[arg-type]
    assert tree_digest(store.directory) == before


# -- clients ---------------------------------------------------------------------------


def test_issue_client_certificate(store: PkiStore) -> None:
    result = store.issue_client("phone-1", days=30)
    cert = result.issued.cert
    ca = load_cert(store.ca_cert_path)
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "phone-1"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=29) < lifetime <= dt.timedelta(days=30)
    assert load_cert(result.cert_path) == cert
    assert mode(result.key_path) == 0o600
    key = serialization.load_pem_private_key(result.key_path.read_bytes(), password=None)
    assert key.public_key() == cert.public_key()


def test_default_client_validity_is_90_days(store: PkiStore) -> None:
    cert = store.issue_client("dev").issued.cert
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days in (89, 90)


def test_serials_are_random_positive_and_at_least_64_bits(store: PkiStore) -> None:
    serials = [store.issue_client(f"dev-{i}").record.serial for i in range(12)]
    assert len(set(serials)) == len(serials)
    for serial in serials:
        assert serial > 0
        assert serial.bit_length() >= 64
        assert serial.bit_length() <= 159  # RFC 5280: at most 20 octets


def test_index_records_each_client(store: PkiStore) -> None:
    a = store.issue_client("a").issued.cert
    b = store.issue_client("b").issued.cert
    raw = json.loads(store.index_path.read_text())
    assert [(c["name"], c["serial"], c["status"]) for c in raw["certs"]] == [
        ("a", format(a.serial_number, "x"), "valid"),
        ("b", format(b.serial_number, "x"), "valid"),
    ]
    assert raw["certs"][0]["not_after"] == a.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert Index.from_bytes(store.index_path.read_bytes()) == store.index()


def test_duplicate_name_refused_unless_force(store: PkiStore) -> None:
    first = store.issue_client("phone")
    before = tree_digest(store.directory)
    with pytest.raises(PkiError, match="already exists"):
        store.issue_client("phone")
    assert tree_digest(store.directory) == before
    second = store.issue_client("phone", force=True)
    assert second.record.serial != first.record.serial
    assert [c.name for c in store.records()] == ["phone", "phone"]


def test_name_reusable_after_revocation(store: PkiStore) -> None:
    store.issue_client("phone")
    store.revoke(name="phone")
    store.issue_client("phone")
    assert [c.status_at() for c in store.records()] == [STATUS_REVOKED, STATUS_VALID]


@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", "", "x" * 65, "sp ace", "-dash"])
def test_invalid_names_refused(store: PkiStore, name: str) -> None:
    before = tree_digest(store.directory)
    with pytest.raises(PkiError, match="invalid name"):
        store.issue_client(name)
    assert tree_digest(store.directory) == before


def test_client_cannot_outlive_ca(tmp_path: Path) -> None:
    s = PkiStore(tmp_path / "pki")
    s.init(ca_days=30)
    with pytest.raises(PkiError, match="outlive"):
        s.issue_client("dev", days=31)
    s.issue_client("dev", days=29)


def test_p12_arguments_checked(store: PkiStore, tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="non-empty"):
        store.issue_client("dev", p12_path=tmp_path / "x.p12")
    with pytest.raises(PkiError, match="non-empty"):
        store.issue_client("dev", p12_path=tmp_path / "x.p12", p12_password="")
    with pytest.raises(PkiError, match="only make sense"):
        store.issue_client("dev", p12_password="pw")
    with pytest.raises(PkiError, match="profile"):
        store.issue_client("dev", p12_path=tmp_path / "x.p12", p12_password="pw", p12_profile="legacy")
    assert store.records() == ()


def test_unwritable_p12_target_leaves_everything_unchanged(store: PkiStore, tmp_path: Path) -> None:
    """The key and cert temporaries are staged before the p12 fails: they must be cleaned up."""
    before = tree_digest(store.directory)
    with pytest.raises(FileNotFoundError):
        store.issue_client("dev", p12_path=tmp_path / "missing-dir" / "dev.p12", p12_password="pw")
    assert tree_digest(store.directory) == before


# -- revocation and CRL ----------------------------------------------------------------


def test_revoke_by_serial_rewrites_crl(store: PkiStore) -> None:
    keep = store.issue_client("keep").record
    gone = store.issue_client("gone").record
    revoked = store.revoke(serial=gone.serial_hex.upper(), reason="keyCompromise")
    assert [r.serial for r in revoked] == [gone.serial]
    crl = load_crl(store)
    assert crl.is_signature_valid(load_cert(store.ca_cert_path).public_key())  # type: ignore[arg-type]
    entry = crl.get_revoked_certificate_by_serial_number(gone.serial)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    assert crl.get_revoked_certificate_by_serial_number(keep.serial) is None
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    statuses = {r.name: r.status_at() for r in store.records()}
    assert statuses == {"keep": STATUS_VALID, "gone": STATUS_REVOKED}


def test_revoke_by_name_revokes_every_live_cert_of_that_name(store: PkiStore) -> None:
    one = store.issue_client("phone").record
    two = store.issue_client("phone", force=True).record
    other = store.issue_client("tablet").record
    revoked = store.revoke(name="phone")
    assert {r.serial for r in revoked} == {one.serial, two.serial}
    listed = {r.serial_number for r in load_crl(store)}
    assert listed == {one.serial, two.serial}
    assert other.serial not in listed


def test_crl_lists_every_revoked_serial_and_unspecified_has_no_reason(store: PkiStore) -> None:
    serials = [store.issue_client(f"d{i}").record.serial for i in range(3)]
    for s in serials:
        store.revoke(serial=s)
    crl = load_crl(store)
    assert {r.serial_number for r in crl} == set(serials)
    for entry in crl:
        with pytest.raises(x509.ExtensionNotFound):
            entry.extensions.get_extension_for_class(x509.CRLReason)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 4


def test_write_crl_dates_and_number(store: PkiStore) -> None:
    crl = store.write_crl(days=3)
    now = dt.datetime.now(dt.UTC)
    assert crl.last_update_utc <= now
    assert crl.next_update_utc is not None
    assert dt.timedelta(days=2, hours=23) < crl.next_update_utc - now <= dt.timedelta(days=3)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    assert store.write_crl().extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 3
    assert load_crl(store).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"serial": "abcdef"}, "no certificate with serial"),
        ({"serial": "not-hex"}, "invalid serial"),
        ({"name": "nobody"}, "no certificate named"),
        ({}, "exactly one"),
        ({"name": "dev", "serial": "1"}, "exactly one"),
        ({"name": "dev", "reason": "bored"}, "unknown reason"),
    ],
)
def test_revoke_rejects(store: PkiStore, kwargs: dict[str, object], message: str) -> None:
    store.issue_client("dev")
    before = tree_digest(store.directory)
    with pytest.raises(PkiError, match=message):
        store.revoke(**kwargs)  # type: ignore[arg-type]
    assert tree_digest(store.directory) == before


def test_revoke_twice_refused(store: PkiStore) -> None:
    rec = store.issue_client("dev").record
    store.revoke(serial=rec.serial)
    before = tree_digest(store.directory)
    with pytest.raises(PkiError, match="already revoked"):
        store.revoke(serial=rec.serial)
    with pytest.raises(PkiError, match="already revoked"):
        store.revoke(name="dev")
    assert tree_digest(store.directory) == before


# -- records, index, missing directories -----------------------------------------------


def test_status_expired() -> None:
    now = dt.datetime.now(dt.UTC)
    rec = CertRecord("x", 1, now - dt.timedelta(days=2), now - dt.timedelta(days=1), "", "")
    assert rec.status_at(now) == STATUS_EXPIRED
    assert CertRecord("x", 1, now, now, "", "", revoked_at=now).status_at(now) == STATUS_REVOKED


@pytest.mark.parametrize(
    ("text", "value"),
    [("ff", 255), ("0xFF", 255), ("00:ff", 255), (" Ab ", 171), (7, 7)],
)
def test_parse_serial(text: str | int, value: int) -> None:
    assert parse_serial(text) == value


@pytest.mark.parametrize("text", ["", "0", "xyz", "0x", -1])
def test_parse_serial_rejects(text: str | int) -> None:
    with pytest.raises(PkiError):
        parse_serial(text)


def test_missing_and_uninitialised_directories(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="does not exist"):
        PkiStore(tmp_path / "nope").records()
    with pytest.raises(PkiError, match="not an initialised"):
        PkiStore(tmp_path).issue_client("dev")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_index(store: PkiStore) -> None:
    store.index_path.write_text("{not json")
    with pytest.raises(PkiError, match="corrupt"):
        store.records()
    store.index_path.write_text(json.dumps({"format": 99}))
    with pytest.raises(PkiError, match="unsupported format"):
        store.records()


# -- staged writes ---------------------------------------------------------------------


def test_staged_writes_roll_back_on_failure(tmp_path: Path) -> None:
    existing = tmp_path / "a.txt"
    existing.write_bytes(b"old")
    staged = _fs.StagedWrites()
    staged.mkdir(tmp_path / "newdir")
    staged.add(existing, b"new", private=False)
    staged.add(tmp_path / "missing" / "b.txt", b"x", private=True)
    with pytest.raises(FileNotFoundError):
        staged.commit()
    assert existing.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_staged_writes_replace_atomically_with_final_mode(tmp_path: Path) -> None:
    target = tmp_path / "secret.key"
    target.write_bytes(b"old")
    target.chmod(0o644)
    staged = _fs.StagedWrites()
    staged.add(target, b"new", private=True)
    staged.commit()
    assert target.read_bytes() == b"new"
    assert mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]


def test_concurrent_issues_do_not_lose_index_updates(store: PkiStore) -> None:
    """Each command holds a flock on the directory: parallel read-modify-writes serialise."""
    errors: list[BaseException] = []

    def issue(i: int) -> None:
        try:
            PkiStore(store.directory).issue_client(f"dev-{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=issue, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(r.name for r in store.records()) == sorted(f"dev-{i}" for i in range(8))


# -- issuing intermediate ------------------------------------------------------------------


def test_init_with_issuing_ca_writes_an_intermediate_under_the_client_ca(tmp_path: Path) -> None:
    s = PkiStore(tmp_path / "pki", passphrase=PASSPHRASE)
    s.init(issuing_ca=True, issuing_ca_days=100)
    root, issuing = load_cert(s.ca_cert_path), load_cert(s.issuing_ca_cert_path)
    assert issuing.issuer == root.subject and issuing.subject != root.subject
    issuing.verify_directly_issued_by(root)
    constraints = issuing.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    usage = issuing.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert dt.timedelta(days=99) < issuing.not_valid_after_utc - issuing.not_valid_before_utc < dt.timedelta(days=101)
    assert (mode(s.issuing_ca_key_path), mode(s.issuing_ca_cert_path)) == (0o600, 0o644)
    # the service loads the issuing key unattended; the root key stays encrypted
    assert b"ENCRYPTED" not in s.issuing_ca_key_path.read_bytes()
    assert b"ENCRYPTED" in s.ca_key_path.read_bytes()
    loaded = PkiStore(s.directory).issuing_ca()  # no passphrase needed
    assert loaded.cert == issuing


def test_init_without_issuing_ca_writes_none(store: PkiStore) -> None:
    assert not store.issuing_ca_cert_path.exists() and not store.issuing_ca_key_path.exists()
    with pytest.raises(PkiError, match=r"issuing-ca\.pem is missing"):
        store.issuing_ca()


def test_init_refuses_an_issuing_ca_outliving_the_root(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="would outlive the client CA"):
        PkiStore(tmp_path / "pki").init(ca_days=100, issuing_ca=True, issuing_ca_days=200)
    assert not (tmp_path / "pki").exists()


def test_issue_issuing_ca_for_an_existing_pki_and_force_to_rotate(locked_store: PkiStore) -> None:
    first = locked_store.issue_issuing_ca(days=30)
    before = tree_digest(locked_store.directory)
    with pytest.raises(PkiError, match="pass --force"):
        locked_store.issue_issuing_ca()
    assert tree_digest(locked_store.directory) == before
    second = locked_store.issue_issuing_ca(force=True)
    assert second.cert.serial_number != first.cert.serial_number
    assert locked_store.issuing_ca().cert == second.cert
    with pytest.raises(PkiError, match="encrypted; pass the CA passphrase"):
        PkiStore(locked_store.directory).issue_issuing_ca(force=True)


def test_issuing_ca_key_must_match_its_certificate(tmp_path: Path) -> None:
    s = PkiStore(tmp_path / "pki")
    s.init(issuing_ca=True)
    s.issuing_ca_key_path.write_bytes(s.ca_key_path.read_bytes())
    with pytest.raises(PkiError, match="does not belong to"):
        s.issuing_ca()


def test_openssl_verifies_a_leaf_of_the_issuing_ca_to_the_root_only(tmp_path: Path) -> None:
    """The proxy trusts ca.pem; the device sends leaf + issuing CA (or the bundle holds both)."""
    import subprocess

    from mtls_proxy.pki.x509 import issue_client

    s = PkiStore(tmp_path / "pki")
    s.init(issuing_ca=True)
    leaf = issue_client("device-1", s.issuing_ca())
    (tmp_path / "leaf.pem").write_bytes(leaf.cert_pem())

    def verify(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["openssl", "verify", "-purpose", "sslclient", *args, str(tmp_path / "leaf.pem")],
                              capture_output=True, text=True, timeout=30)

    good = verify("-CAfile", str(s.ca_cert_path), "-untrusted", str(s.issuing_ca_cert_path))
    assert good.returncode == 0, good.stderr
    alone = verify("-CAfile", str(s.ca_cert_path))
    assert alone.returncode != 0 and "unable to get local issuer certificate" in alone.stdout + alone.stderr
