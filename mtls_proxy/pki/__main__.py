"""``python -m mtls_proxy.pki ARGS`` == ``mtls-proxy pki ARGS``.

A standalone entry that needs nothing but this package: handy for scripts and for the
tests, and it keeps working whatever the main CLI looks like.
"""

from __future__ import annotations

import argparse
import sys

from mtls_proxy.pki.cli import add_pki_parser, run_pki


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtls-proxy")
    add_pki_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["pki", *(sys.argv[1:] if argv is None else argv)])
    return run_pki(args)


if __name__ == "__main__":
    raise SystemExit(main())
