#!/usr/bin/env python3
"""HTTP/2 load with a client certificate: curl's multiplexed ``--parallel`` over ONE connection.

    python bench/h2curl.py --port N --cert C --key K --cacert CA [--requests 20000] [--streams 100]

h2load cannot present a client certificate; curl can, and with ``--parallel --http2`` it
multiplexes up to ``--streams`` concurrent streams on a single connection. Speaks the protocol of
bench/loadgen.c: ``MARK start`` / ``MARK end`` around the measured window (bench/run.py samples the
proxy's CPU there) and one JSON line with ``rps``, ``completed``, ``errors`` and ``cpu_s`` (curl's).
curl's own per-request cost bounds the rate for both proxies alike: compare the proxies' CPU per
request (bench/run.py reports it), not only the rates.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--cacert", required=True)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--path", default="/small")
    args = ap.parse_args()
    url = f"https://localhost:{args.port}{args.path}"
    with tempfile.NamedTemporaryFile("w", suffix=".curlrc") as cfg:
        cfg.write("".join(f'url = "{url}"\noutput = "/dev/null"\n' for _ in range(args.requests)))
        cfg.flush()
        cmd = ["curl", "-sS", "--http2", "--parallel", "--parallel-max", str(args.streams),
               "--cert", args.cert, "--key", args.key, "--cacert", args.cacert,
               "-w", "%{http_code} %{http_version}\n", "-K", cfg.name]
        print("MARK start", flush=True)
        started = time.monotonic()
        run = subprocess.run(cmd, capture_output=True, text=True)
        elapsed = time.monotonic() - started
        print("MARK end", flush=True)
    lines = run.stdout.split("\n")
    ok = sum(1 for line in lines if line == "200 2")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({
        "rps": ok / elapsed if elapsed else 0.0,
        "completed": ok,
        "errors": args.requests - ok,
        "last_error": run.stderr.strip()[-300:] or None,
        "cpu_s": usage.ru_utime + usage.ru_stime,
    }), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
