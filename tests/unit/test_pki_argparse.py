"""add_pki_parser / run_pki in-process: parsing, exit codes, error lines, output."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from mtls_proxy.pki.cli import add_pki_parser, run_pki


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mtls-proxy")
    add_pki_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["pki", *argv])


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_pki(parse(*argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_dir_before_or_after_subcommand() -> None:
    assert parse("list").pki_dir == "./pki"
    assert parse("--dir", "/a", "list").pki_dir == "/a"
    assert parse("list", "--dir", "/b").pki_dir == "/b"
    assert parse("--dir", "/a", "list", "--dir", "/b").pki_dir == "/b"
    assert parse("list").pki_command == "list"


def test_defaults() -> None:
    ns = parse("init")
    assert (ns.key_type, ns.server_mode, ns.org) == ("ec-p256", "ca", "mtls-proxy")
    ns = parse("issue-client", "--name", "x")
    assert (ns.days, ns.p12_profile, ns.force) == (90, "compat", False)
    assert parse("pins").pin_format == "raw"


def test_no_subcommand_is_a_usage_error() -> None:
    code, out, err = run()
    assert code == 2 and out == ""
    assert err.startswith("mtls-proxy pki: error: choose a subcommand")


def test_errors_are_one_line_and_return_1(tmp_path: Path) -> None:
    code, _, err = run("--dir", str(tmp_path / "missing"), "list")
    assert code == 1
    assert err.startswith("mtls-proxy pki: error: ") and err.count("\n") == 1
    assert "does not exist" in err


def test_oserror_becomes_an_error_line(tmp_path: Path) -> None:
    d = str(tmp_path / "pki")
    assert run("--dir", d, "init")[0] == 0
    code, _, err = run(
        "--dir", d, "issue-client", "--name", "x", "--p12", str(tmp_path / "no" / "x.p12"), "--password", "p"
    )
    assert code == 1
    assert err.startswith("mtls-proxy pki: error: ") and "No such file" in err


def test_full_cycle_output(tmp_path: Path) -> None:
    d = str(tmp_path / "pki")
    pass_file = tmp_path / "ca.pass"
    pass_file.write_text("sesame\n")  # the trailing newline is not part of the passphrase
    unlock = ("--ca-passphrase-file", str(pass_file))
    assert run("--dir", d, "init", *unlock)[0] == 0
    code, out, _ = run("--dir", d, "issue-server", "--dns", "api.example.com", *unlock)
    assert code == 0 and "server.pem" in out
    code, out, _ = run("--dir", d, "issue-client", "--name", "phone", *unlock)
    assert code == 0 and "issued client certificate 'phone'" in out
    code, out, _ = run("--dir", d, "list")
    header, row = out.splitlines()
    assert header.split() == ["NAME", "SERIAL", "NOT_AFTER", "STATUS"]
    assert row.split()[0] == "phone" and row.split()[3] == "valid"
    code, out, _ = run("--dir", d, "revoke", "--name", "phone", *unlock)
    assert code == 0 and "revoked 'phone'" in out and "SIGHUP" in out
    code, out, _ = run("--dir", d, "list", "--json")
    assert [r["status"] for r in json.loads(out)] == ["revoked"]
    code, out, _ = run("--dir", d, "crl", "--days", "2", *unlock)
    assert code == 0 and "1 revoked" in out
    code, _, err = run("--dir", d, "crl")
    assert code == 1 and "encrypted" in err


def test_pins_formats(tmp_path: Path) -> None:
    d = str(tmp_path / "pki")
    run("--dir", d, "init")
    run("--dir", d, "issue-server", "--ip", "127.0.0.1")
    code, out, _ = run("--dir", d, "pins")
    assert code == 0 and len(out.splitlines()) == 2
    code, _, err = run("--dir", d, "pins", "--format", "android")
    assert code == 1 and "--host" in err, "an IP-only server cert has no pinnable host"
    code, out, _ = run(
        "--dir", d, "pins", "--format", "okhttp", "--host", "api.example.com", "--expiration", "2030-01-02"
    )
    assert code == 0 and out.count('.add("api.example.com", "sha256/') == 2


def test_bad_argument_values_are_argparse_errors() -> None:
    with pytest.raises(SystemExit):
        parse("init", "--key-type", "dsa")
    with pytest.raises(SystemExit):
        parse("revoke")  # --serial or --name is required
    with pytest.raises(SystemExit):
        parse("issue-client", "--name", "x", "--password", "a", "--password-file", "f")
