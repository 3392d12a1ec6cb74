#!/usr/bin/env python3
"""Profile mtls-proxy's per-request path under the small-request load of bench/run.py.

    python bench/profile.py [--load small|handshake|resumed] [--conns N] [--seconds 10] [--rate 200]
                            [--no-native] [--out FILE]

Same set-up as bench/run.py (certificates, upstream nginx on a Unix socket, mtls-proxy pinned to
CPU 1, load generator and py-spy pinned to CPU 0). py-spy samples the proxy while the load generator
keeps N keep-alive connections busy with GET /small; the collapsed stacks are saved in
bench/out/profile.collapsed (open it in https://www.speedscope.app or feed it to flamegraph.pl) and
summarised as two tables: self time per function and inclusive time per function.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run


def ensure_py_spy() -> str:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        run.log("installing py-spy (pip)")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return exe


_SYSCALLS = {"write", "writev", "read", "readv", "recv", "recvfrom", "send", "sendto", "sendmsg", "recvmsg"}
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """'_judge (mtls_proxy/proxy.py:402)' -> '_judge (mtls_proxy/proxy.py)'; shortens site-packages paths."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group('func')} ({path})"


def summarise(collapsed: Path, top: int) -> str:
    self_count: collections.Counter[str] = collections.Counter()
    incl_count: collections.Counter[str] = collections.Counter()
    syscall_by_caller: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [frame_name(f) for f in stack.split(";") if f]
        # py-spy puts the thread name first ("process 123:\"python\"", "thread (0x...)"): skip non-frames
        frames = [f for f in frames if "(" in f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_count[frames[-1]] += count
        leaf = frames[-1].split(" (")[0]
        if leaf in _SYSCALLS and "libc" in frames[-1]:
            callers = [f for f in frames if "mtls_proxy/" in f or ".py)" in f]
            syscall_by_caller[f"{leaf} <- {callers[-1] if callers else '(event loop)'}"] += count
        for f in set(frames):
            incl_count[f] += count
    if not total:
        return "no samples\n"

    def table(counter: collections.Counter[str], title: str, keep: object = None) -> str:
        rows = [(f, c) for f, c in counter.most_common() if keep is None or keep(f)][:top]  # type: ignore[operator]
        out = [f"| {title} | % of samples |", "| --- | ---: |"]
        out += [f"| `{f}` | {100 * c / total:.1f} |" for f, c in rows]
        return "\n".join(out)

    return (
        f"{total} samples.\n\nSelf time (where the CPU is, including native frames):\n\n"
        + table(self_count, "function (self)")
        + "\n\nInclusive time, mtls_proxy functions (the per-request path):\n\n"
        + table(incl_count, "function (inclusive)", lambda f: "mtls_proxy/" in f)
        + (
            "\n\nSystem calls by the nearest Python caller (native profiles only; '(event loop)' is uvloop "
            "reading sockets before any Python code runs):\n\n" + table(syscall_by_caller, "syscall <- caller")
            if syscall_by_caller
            else ""
        )
        + "\n\nInclusive time, everything:\n\n"
        + table(incl_count, "function (inclusive)")
        + "\n"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--load",
        choices=["small", "handshake", "resumed"],
        default="small",
        help="keep-alive GET /small (default), full handshakes, or resumed handshakes",
    )
    ap.add_argument("--conns", type=int, default=None, help="connections (default 256; 32 for handshakes)")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--no-native", action="store_true", help="Python frames only")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", help="also write the summary (markdown) here")
    args = ap.parse_args()
    run.PIN = run.can_pin()
    run.raise_nofile()
    py_spy = ensure_py_spy()
    workdir = Path(tempfile.mkdtemp(prefix="mtls-profile-", dir="/dev/shm"))
    profile = run.Profile("profile", 1, 1.0, args.seconds + 3, 32, 1_000_000, (1, 1))
    bench = run.Bench(profile, workdir)
    run.log(f"code: {run.code_version(bench.src)}")
    collapsed = run.OUT / "profile.collapsed"
    try:
        bench.start_upstream()
        t = run.Target("mtls", "mtls-proxy", start_fn=bench._start_mtls)
        bench.targets = {"mtls": t}
        t.start()
        pid = t.server_pids()[-1]
        timing = ["--warmup", "1", "--duration", str(args.seconds + 3)]
        if args.load == "small":
            lg = ["http", "--conns", str(args.conns or 256), "--path", "/small", *timing]
        else:
            lg = ["handshake", "--conns", str(args.conns or 32), *timing]
            lg += ["--resume"] if args.load == "resumed" else []
        load = subprocess.Popen(bench.loadgen_cmd(t, *lg), stdout=subprocess.PIPE, text=True)
        time.sleep(2)
        cmd = [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(args.rate),
            "--duration",
            str(int(args.seconds)),
            "--format",
            "raw",
            "--function",
            "-o",
            str(collapsed),
        ]
        # --native (C frames: uvloop, OpenSSL, httptools) needs py-spy to pause the process for each
        # sample; without it, --nonblocking samples without stopping the proxy.
        cmd += ["--native"] if not args.no_native else ["--nonblocking"]
        rec = subprocess.run(run.pinned(run.HARNESS_CPU, cmd), capture_output=True, text=True)
        if rec.returncode != 0 and not args.no_native:
            run.log(f"py-spy --native failed ({rec.stderr.strip()[-300:]}); retrying without --native")
            cmd[-1] = "--nonblocking"
            rec = subprocess.run(run.pinned(run.HARNESS_CPU, cmd), capture_output=True, text=True)
        if rec.returncode != 0:
            sys.exit(f"py-spy failed: {rec.stderr}")
        out, _ = load.communicate(timeout=60)
        result = [ln for ln in out.splitlines() if ln.startswith("{")]
        run.log(f"load during the profile (slowed by the sampling): {result[-1] if result else out.strip()}")
    finally:
        bench.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    text = summarise(collapsed, args.top)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    run.log(f"collapsed stacks: {collapsed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
