"""``mtls-proxy pki`` run as a subprocess and checked with independent, real tools.

keytool must open the bundles, openssl must accept the CRL and compute the same pins, a
JSSE client (tests/java/MtlsClient.java) must authenticate with the PKCS#12 against a
server that requires client certificates, and every refused command must leave the
PKI directory byte-for-byte unchanged. Certificates are generated at test time.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import plistlib
import re
import shutil
import ssl
import stat
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.fs import tree_digest

JAVA_SRC = Path(__file__).resolve().parents[1] / "java" / "MtlsClient.java"
P12_PASSWORD = "app-import-pw"
CA_PASSPHRASE = "ca passphrase 123"

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
needs_keytool = pytest.mark.skipif(shutil.which("keytool") is None, reason="JDK keytool not installed")
needs_java = pytest.mark.skipif(
    shutil.which("javac") is None or shutil.which("java") is None, reason="JDK (javac, java) not installed"
)


# -- helpers ---------------------------------------------------------------------------


def pki(*args: str | Path, cwd: Path | None = None, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run ``python -m mtls_proxy.pki ARGS`` (the same code as ``mtls-proxy pki ARGS``)."""
    cmd = [*prefix, sys.executable, "-m", "mtls_proxy.pki", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)


def ok(*args: str | Path, cwd: Path | None = None) -> str:
    result = pki(*args, cwd=cwd)
    assert result.returncode == 0, f"pki {args} failed: {result.stderr}"
    return result.stdout


def sh(command: str) -> str:
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def openssl_cert_pin(pem: Path) -> str:
    """The pin exactly as the mobile docs compute it, with openssl alone."""
    return sh(
        f"openssl x509 -in '{pem}' -pubkey -noout | openssl pkey -pubin -outform der"
        " | openssl dgst -sha256 -binary | base64"
    )


def openssl_key_pin(key: Path) -> str:
    return sh(f"openssl pkey -in '{key}' -pubout -outform der | openssl dgst -sha256 -binary | base64")


def serial_of(pem: Path) -> str:
    """Serial in uppercase hex without leading zeros, as ``openssl crl -text`` prints it."""
    return sh(f"openssl x509 -in '{pem}' -noout -serial").split("=", 1)[1].lstrip("0")


@dataclass(frozen=True)
class Pki:
    dir: Path
    work: Path  # cwd for commands, holds the p12 files

    def p12(self, name: str) -> Path:
        return self.work / f"{name}.p12"


def _build(root: Path, *init_args: str) -> Pki:
    work = root
    d = root / "pki"
    ok("--dir", d, "init", *init_args)
    unlock: tuple[str, ...] = ()
    if "--ca-passphrase-file" in init_args:
        unlock = ("--ca-passphrase-file", init_args[init_args.index("--ca-passphrase-file") + 1])
    ok("--dir", d, "issue-server", "--dns", "localhost", "--ip", "127.0.0.1", *unlock)
    for name, profile in (("phone-compat", "compat"), ("phone-modern", "modern"), ("phone-revoked", "compat")):
        p12 = work / f"{name}.p12"
        ok("--dir", d, "issue-client", "--name", name, "--p12", p12, "--password", P12_PASSWORD,
           "--p12-profile", profile, *unlock)  # fmt: skip
    ok("--dir", d, "revoke", "--name", "phone-revoked", "--reason", "keyCompromise", *unlock)
    return Pki(d, work)


@pytest.fixture(scope="module")
def ca_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return _build(tmp_path_factory.mktemp("ca-pki"))


@pytest.fixture(scope="module")
def ss_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return _build(tmp_path_factory.mktemp("ss-pki"), "--server", "self-signed", "--key-type", "rsa-2048")


@pytest.fixture(scope="module")
def locked_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("locked-pki")
    pass_file = root / "ca.pass"
    pass_file.write_text(CA_PASSPHRASE + "\n")
    return _build(root, "--ca-passphrase-file", str(pass_file))


@pytest.fixture
def scratch(ca_pki: Pki, tmp_path: Path) -> Pki:
    """A private copy of the CA-mode PKI, for tests that try to damage it."""
    shutil.copytree(ca_pki.dir, tmp_path / "pki", symlinks=True)
    return Pki(tmp_path / "pki", tmp_path)


# -- layout ----------------------------------------------------------------------------


def test_layout_and_private_modes(ca_pki: Pki) -> None:
    d = ca_pki.dir
    private = ["ca.key", "server-ca.key", "server.key", *(f"clients/{n}.key" for n in ("phone-compat", "phone-modern"))]
    for rel in private:
        assert stat.S_IMODE((d / rel).stat().st_mode) == 0o600, rel
    for rel in ("ca.pem", "server-ca.pem", "server.pem", "crl.pem", "index.json", "clients/phone-compat.pem"):
        assert stat.S_IMODE((d / rel).stat().st_mode) == 0o644, rel
    assert stat.S_IMODE(ca_pki.p12("phone-compat").stat().st_mode) == 0o600
    assert not list(d.rglob(".*.tmp"))


def test_list_shows_statuses(ca_pki: Pki) -> None:
    rows = [line.split() for line in ok("--dir", ca_pki.dir, "list").splitlines()]
    assert rows[0] == ["NAME", "SERIAL", "NOT_AFTER", "STATUS"]
    assert {r[0]: r[3] for r in rows[1:]} == {
        "phone-compat": "valid",
        "phone-modern": "valid",
        "phone-revoked": "revoked",
    }


# -- keytool reads both PKCS#12 profiles -----------------------------------------------


@needs_keytool
@pytest.mark.parametrize("name", ["phone-compat", "phone-modern"])
def test_keytool_reads_bundle(ca_pki: Pki, name: str) -> None:
    cmd = ["keytool", "-list", "-storetype", "PKCS12", "-keystore", str(ca_pki.p12(name))]
    good = subprocess.run([*cmd, "-storepass", P12_PASSWORD], capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "PrivateKeyEntry" in good.stdout and name in good.stdout
    bad = subprocess.run([*cmd, "-storepass", "wrong-password"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
    assert "password" in (bad.stdout + bad.stderr).lower()


@needs_openssl
def test_openssl_sees_the_profile_algorithms(ca_pki: Pki) -> None:
    def info(name: str) -> str:
        result = subprocess.run(
            ["openssl", "pkcs12", "-in", str(ca_pki.p12(name)), "-info", "-noout", "-passin", f"pass:{P12_PASSWORD}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout + result.stderr

    compat = info("phone-compat")
    assert "MAC: sha1, Iteration 50000\n" in compat  # the MAC costs a guesser as much as the key does
    assert "Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC, Iteration 50000\n" in compat
    modern = info("phone-modern")
    assert "MAC: sha256, Iteration 50000\n" in modern
    assert "Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC, Iteration 50000, PRF hmacWithSHA256\n" in modern
    assert "TripleDES" not in modern


GENERATED = re.compile(r"^  p12 password \(generated; shown only now, stored nowhere\): ((?:[a-km-np-z2-9]{5}-){4}"
                       r"[a-km-np-z2-9]{5})$", re.M)


@needs_openssl
@needs_keytool
@pytest.mark.parametrize("profile", ["compat", "modern"])
def test_issue_client_without_password_generates_and_prints_one_once(scratch: Pki, profile: str) -> None:
    p12 = scratch.work / f"gen-{profile}.p12"
    result = pki("--dir", scratch.dir, "issue-client", "--name", f"gen-{profile}", "--p12", p12,
                 "--p12-profile", profile, cwd=scratch.work)  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = GENERATED.findall(result.stdout)
    assert len(printed) == 1, result.stdout
    password = printed[0]
    assert result.stdout.count(password) == 1 and password not in result.stderr
    opened = subprocess.run(["openssl", "pkcs12", "-in", str(p12), "-info", "-noout", "-passin", f"pass:{password}"],
                            capture_output=True, text=True, timeout=60)
    assert opened.returncode == 0, opened.stderr
    assert "Iteration 50000" in opened.stdout + opened.stderr
    listed = subprocess.run(["keytool", "-list", "-storetype", "PKCS12", "-keystore", str(p12), "-storepass", password],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and f"gen-{profile}, " in listed.stdout, listed.stdout + listed.stderr
    # written nowhere: no file under the PKI directory or the working directory holds it, in any encoding
    spellings = [password.encode(), password.encode("utf-16-be"), password.encode("utf-16-le")]
    for root in (scratch.dir, scratch.work):
        for f in root.rglob("*"):
            if f.is_file():
                data = f.read_bytes()
                assert not any(s in data for s in spellings), f
    second = pki("--dir", scratch.dir, "issue-client", "--name", f"gen2-{profile}", "--p12",
                 scratch.work / f"gen2-{profile}.p12", "--p12-profile", profile, cwd=scratch.work)  # fmt: skip
    assert GENERATED.findall(second.stdout) != printed  # a new one each time


# -- CRL -------------------------------------------------------------------------------


@needs_openssl
def test_openssl_verifies_crl_and_lists_revoked_serial(ca_pki: Pki) -> None:
    d = ca_pki.dir
    verify = subprocess.run(
        ["openssl", "crl", "-in", str(d / "crl.pem"), "-noout", "-verify", "-CAfile", str(d / "ca.pem")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0 and "verify OK" in verify.stdout + verify.stderr
    text = sh(f"openssl crl -in '{d / 'crl.pem'}' -noout -text")
    listed = {s.lstrip("0") for s in re.findall(r"Serial Number: ([0-9A-F]+)", text)}
    assert listed == {serial_of(d / "clients" / "phone-revoked.pem")}
    assert "Key Compromise" in text
    assert "Next Update:" in text and "X509v3 CRL Number" in text


@needs_openssl
def test_openssl_verify_with_crl_rejects_only_the_revoked_device(ca_pki: Pki) -> None:
    d = ca_pki.dir

    def verify(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "verify", "-crl_check", "-CAfile", str(d / "ca.pem"), "-CRLfile", str(d / "crl.pem"),
             "-purpose", "sslclient", str(d / "clients" / f"{name}.pem")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    assert verify("phone-compat").returncode == 0
    revoked = verify("phone-revoked")
    assert revoked.returncode != 0 and "revoked" in revoked.stdout + revoked.stderr


@needs_openssl
def test_crl_command_resigns_with_new_number(scratch: Pki) -> None:
    crl = scratch.dir / "crl.pem"
    before = sh(f"openssl crl -in '{crl}' -noout -crlnumber")
    ok("--dir", scratch.dir, "crl", "--days", "3")
    after = sh(f"openssl crl -in '{crl}' -noout -crlnumber")
    assert int(after.split("=")[1], 16) == int(before.split("=")[1], 16) + 1
    assert "Serial Number" in sh(f"openssl crl -in '{crl}' -noout -text")


# -- pins ------------------------------------------------------------------------------


def raw_pins(pki_: Pki) -> dict[str, str]:
    return {line.split("\t")[1]: line.split("\t")[0] for line in ok("--dir", pki_.dir, "pins").splitlines()}


@needs_openssl
def test_pins_equal_openssl_ca_mode(ca_pki: Pki) -> None:
    pins = raw_pins(ca_pki)
    assert pins == {
        "leaf": openssl_cert_pin(ca_pki.dir / "server.pem"),
        "ca": openssl_cert_pin(ca_pki.dir / "server-ca.pem"),
    }


@needs_openssl
def test_pins_equal_openssl_self_signed_with_real_backup_key(ss_pki: Pki) -> None:
    pins = raw_pins(ss_pki)
    backup = ss_pki.dir / "server-backup.key"
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert pins == {"leaf": openssl_cert_pin(ss_pki.dir / "server.pem"), "backup": openssl_key_pin(backup)}
    assert raw_pins(ss_pki) == pins, "the backup pin must not change between runs"


@pytest.mark.parametrize("which", ["ca_pki", "ss_pki"])
def test_android_snippet(which: str, request: pytest.FixtureRequest) -> None:
    pki_: Pki = request.getfixturevalue(which)
    raw = raw_pins(pki_)
    root = ET.fromstring(ok("--dir", pki_.dir, "pins", "--format", "android", "--host", "api.example.com"))
    assert root.findtext("domain-config/domain") == "api.example.com"
    pin_set = root.find("domain-config/pin-set")
    assert pin_set is not None
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", pin_set.get("expiration", ""))
    pins = [p.text for p in pin_set.findall("pin") if p.get("digest") == "SHA-256"]
    assert len(pins) >= 2 and set(pins) == set(raw.values())


@pytest.mark.parametrize(("which", "key"), [("ca_pki", "NSPinnedCAIdentities"), ("ss_pki", "NSPinnedLeafIdentities")])
def test_ios_snippet(which: str, key: str, request: pytest.FixtureRequest) -> None:
    pki_: Pki = request.getfixturevalue(which)
    doc = plistlib.loads(ok("--dir", pki_.dir, "pins", "--format", "ios").encode())
    domain = doc["NSAppTransportSecurity"]["NSPinnedDomains"]["localhost"]
    pins = [entry["SPKI-SHA256-BASE64"] for entry in domain[key]]
    assert pins and set(pins) <= set(raw_pins(pki_).values())


def test_okhttp_and_trustkit_snippets(ca_pki: Pki) -> None:
    raw = raw_pins(ca_pki)
    okhttp = ok("--dir", ca_pki.dir, "pins", "--format", "okhttp", "--host", "api.example.com")
    assert re.findall(r'\.add\("api\.example\.com", "sha256/([^"]+)"\)', okhttp) == [raw["leaf"], raw["ca"]]
    doc = plistlib.loads(ok("--dir", ca_pki.dir, "pins", "--format", "trustkit").encode())
    hashes = doc["TSKConfiguration"]["TSKPinnedDomains"]["localhost"]["TSKPublicKeyHashes"]
    assert len(hashes) >= 2 and set(hashes) == set(raw.values())


# -- every refusal: non-zero, a message, nothing changed -------------------------------


def assert_refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode != 0, result.stdout
    assert result.stderr.startswith("mtls-proxy pki: error: "), result.stderr
    assert message in result.stderr, result.stderr


BAD_ON_CA_PKI = [
    (["issue-client", "--name", "phone-compat"], "already exists"),
    (["revoke", "--serial", "deadbeef"], "no certificate with serial"),
    (["revoke", "--name", "ghost"], "no certificate named"),
    (["revoke", "--name", "phone-revoked"], "already revoked"),
    (["revoke", "--serial", "zz"], "invalid serial"),
    (["issue-client", "--name", "../escape"], "invalid name"),
    (["issue-client", "--name", "x", "--days", "0"], "positive"),
    (["issue-client", "--name", "x", "--days", "4000"], "outlive"),
    (["issue-client", "--name", "x", "--p12", "x.p12", "--password", ""], "non-empty --password"),
    (["issue-client", "--name", "x", "--p12", "no-such-dir/x.p12", "--password", "pw"], "No such file"),
    (["issue-client", "--name", "x", "--password", "pw"], "--p12"),
    (["issue-server"], "at least one"),
    (["issue-server", "--dns", "bad name"], "invalid DNS"),
    (["crl", "--days", "-1"], "positive"),
    (["init"], "already an initialised"),
    (["init", "--server", "self-signed"], "already an initialised"),
    (["issue-client", "--name", "x", "--ca-passphrase-file", "ca.pass"], "not encrypted"),
    (["issue-client", "--name", "x", "--ca-passphrase-file", "missing.pass"], "cannot read"),
]


@pytest.mark.parametrize(("args", "message"), BAD_ON_CA_PKI, ids=[" ".join(a) for a, _ in BAD_ON_CA_PKI])
def test_refusals_leave_pki_unchanged(scratch: Pki, args: list[str], message: str) -> None:
    (scratch.work / "ca.pass").write_text("whatever\n")
    before_pki, before_work = tree_digest(scratch.dir), sorted(p.name for p in scratch.work.iterdir())
    assert_refused(pki("--dir", scratch.dir, *args, cwd=scratch.work), message)
    assert tree_digest(scratch.dir) == before_pki
    assert sorted(p.name for p in scratch.work.iterdir()) == before_work


BAD_PASSPHRASE = [
    (["issue-client", "--name", "x"], None, "encrypted"),
    (["issue-client", "--name", "x"], "wrong", "wrong CA passphrase"),
    (["issue-server", "--dns", "x.test"], "wrong", "wrong CA passphrase"),
    (["revoke", "--name", "phone-compat"], "wrong", "wrong CA passphrase"),
    (["crl"], "wrong", "wrong CA passphrase"),
    (["crl"], None, "encrypted"),
]


@pytest.mark.parametrize(("args", "passphrase", "message"), BAD_PASSPHRASE)
def test_wrong_or_missing_ca_passphrase(
    locked_pki: Pki, tmp_path: Path, args: list[str], passphrase: str | None, message: str
) -> None:
    unlock: list[str] = []
    if passphrase is not None:
        (tmp_path / "p").write_text(passphrase)
        unlock = ["--ca-passphrase-file", str(tmp_path / "p")]
    before = tree_digest(locked_pki.dir)
    assert_refused(pki("--dir", locked_pki.dir, *args, *unlock, cwd=tmp_path), message)
    assert tree_digest(locked_pki.dir) == before


def test_right_passphrase_works(locked_pki: Pki, tmp_path: Path) -> None:
    shutil.copytree(locked_pki.dir, tmp_path / "pki")
    ok("--dir", tmp_path / "pki", "crl", "--ca-passphrase-file", locked_pki.work / "ca.pass")


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["issue-client", "--name", "x"],
        ["revoke", "--name", "x"],
        ["crl"],
        ["pins"],
        ["issue-server", "--dns", "a.test"],
    ],
)
def test_missing_and_uninitialised_dir(tmp_path: Path, args: list[str]) -> None:
    assert_refused(pki("--dir", tmp_path / "missing", *args, cwd=tmp_path), "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_refused(pki("--dir", empty, *args, cwd=tmp_path), "not an initialised PKI directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    assert list(empty.iterdir()) == []


def test_init_refusals(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    assert_refused(pki("--dir", tmp_path / "busy", "init"), "not empty")
    (tmp_path / "plain-file").write_text("x")
    assert_refused(pki("--dir", tmp_path / "plain-file", "init"), "not a directory")
    assert_refused(pki("--dir", tmp_path / "plain-file", "list"), "not a directory")
    assert_refused(pki("--dir", tmp_path / "plain-file" / "pki", "init"), "plain-file is not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "plain-file"]
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["file"]


def _without_write_override() -> tuple[str, ...]:
    """Root ignores mode bits; drop CAP_DAC_OVERRIDE so a 0555 directory is really read-only."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a directory unwritable")
    return ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--")


@contextlib.contextmanager
def read_only(*dirs: Path) -> Iterator[None]:
    modes = [d.stat().st_mode for d in dirs]
    try:
        for d in dirs:
            d.chmod(0o555)
        yield
    finally:
        for d, m in zip(dirs, modes, strict=True):
            d.chmod(m)


@pytest.mark.parametrize(
    "args",
    [
        ["issue-client", "--name", "x"],
        ["revoke", "--name", "phone-compat"],
        ["crl"],
        ["issue-server", "--dns", "new.test"],
    ],
)
def test_unwritable_dir(scratch: Pki, args: list[str]) -> None:
    prefix = _without_write_override()
    before = tree_digest(scratch.dir)
    with read_only(scratch.dir, scratch.dir / "clients"):
        result = pki("--dir", scratch.dir, *args, cwd=scratch.work, prefix=prefix)
    assert_refused(result, "Permission denied")
    assert tree_digest(scratch.dir) == before


def test_init_creates_missing_parents(tmp_path: Path) -> None:
    d = tmp_path / "a" / "b" / "pki"
    ok("--dir", d, "init")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert (d / "index.json").is_file() and (d / "ca.pem").is_file()
    ok("--dir", d, "list")


def test_init_in_unwritable_parent(tmp_path: Path) -> None:
    prefix = _without_write_override()
    parent = tmp_path / "ro"
    parent.mkdir()
    with read_only(parent):
        result = pki("--dir", parent / "pki", "init", cwd=tmp_path, prefix=prefix)
    assert_refused(result, "Permission denied")
    assert list(parent.iterdir()) == []


# -- JSSE client against a server that requires client certificates -------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        cert = self.connection.getpeercert()  # type: ignore[attr-defined]
        cn = dict(item[0] for item in cert["subject"])["commonName"]
        status, body = (403, "forbidden") if self.path == "/forbidden" else (200, f"hello {cn}")
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def mtls_server(pki_: Pki, *, with_crl: bool) -> Iterator[str]:
    """A tiny HTTPS server: CERT_REQUIRED against the PKI's client CA, optionally CRL-checked."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki_.dir / "server.pem", pki_.dir / "server.key")
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=pki_.dir / "ca.pem")
    if with_crl:
        ctx.load_verify_locations(cafile=pki_.dir / "crl.pem")
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def java_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.skip("JDK (javac, java) not installed")
    out = tmp_path_factory.mktemp("java-classes")
    result = subprocess.run(["javac", "-d", str(out), str(JAVA_SRC)], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    return out


def run_java(classes: Path, url: str, p12: Path, password: str, trust: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["java", "-cp", str(classes), "MtlsClient", url, str(p12), password, str(trust)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@needs_java
@pytest.mark.parametrize("device", ["phone-compat", "phone-modern"])
def test_jsse_client_authenticates_with_bundle(java_client: Path, ca_pki: Pki, device: str) -> None:
    with mtls_server(ca_pki, with_crl=True) as url:
        result = run_java(java_client, url + "/", ca_pki.p12(device), P12_PASSWORD, ca_pki.dir / "server-ca.pem")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == ["200", f"hello {device}"]


@needs_java
def test_jsse_http_error_status_exits_2(java_client: Path, ca_pki: Pki) -> None:
    with mtls_server(ca_pki, with_crl=False) as url:
        result = run_java(java_client, url + "/forbidden", ca_pki.p12("phone-compat"), P12_PASSWORD,
                          ca_pki.dir / "server-ca.pem")  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stdout.splitlines()[0] == "403"


@needs_java
def test_jsse_revoked_bundle_is_refused_by_crl(java_client: Path, ca_pki: Pki) -> None:
    p12, trust = ca_pki.p12("phone-revoked"), ca_pki.dir / "server-ca.pem"
    with mtls_server(ca_pki, with_crl=False) as url:
        assert run_java(java_client, url + "/", p12, P12_PASSWORD, trust).returncode == 0, "control: CRL not loaded"
    with mtls_server(ca_pki, with_crl=True) as url:
        result = run_java(java_client, url + "/", p12, P12_PASSWORD, trust)
    assert result.returncode == 3, result.stdout + result.stderr


@needs_java
def test_jsse_trusts_only_the_given_anchor(java_client: Path, ca_pki: Pki) -> None:
    """Trusting the client CA (not the server CA) must fail the server check: nothing else is trusted."""
    with mtls_server(ca_pki, with_crl=False) as url:
        result = run_java(java_client, url + "/", ca_pki.p12("phone-compat"), P12_PASSWORD, ca_pki.dir / "ca.pem")
    assert result.returncode == 3
    assert "SSL" in result.stderr or "PKIX" in result.stderr


@needs_java
def test_jsse_wrong_p12_password_exits_3(java_client: Path, ca_pki: Pki) -> None:
    with mtls_server(ca_pki, with_crl=False) as url:
        result = run_java(java_client, url + "/", ca_pki.p12("phone-compat"), "wrong", ca_pki.dir / "server-ca.pem")
    assert result.returncode == 3


@needs_java
def test_jsse_self_signed_server(java_client: Path, ss_pki: Pki) -> None:
    with mtls_server(ss_pki, with_crl=True) as url:
        result = run_java(java_client, url + "/", ss_pki.p12("phone-compat"), P12_PASSWORD, ss_pki.dir / "server.pem")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == ["200", "hello phone-compat"]


def test_init_issuing_ca_and_rotation_from_the_command_line(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    out = ok("init", "--dir", d, "--issuing-ca", "--issuing-ca-days", "90")
    assert f"issuing CA (enrollment service): {d / 'issuing-ca.pem'}" in out
    chain = sh(f"openssl verify -CAfile {d / 'ca.pem'} {d / 'issuing-ca.pem'}")
    assert chain.endswith(": OK")
    first = serial_of(d / "issuing-ca.pem")
    refused = pki("issuing-ca", "--dir", d)
    assert refused.returncode == 1
    expected = f"{d / 'issuing-ca.pem'} exists; pass --force to replace the issuing CA"
    assert refused.stderr == f"mtls-proxy pki: error: {expected}\n"
    assert "issued issuing CA" in ok("issuing-ca", "--dir", d, "--force", "--days", "30")
    assert serial_of(d / "issuing-ca.pem") != first
