"""``python -m minitorch_ext.bench FAMILY [FAMILY ...] | all`` — see ``--help``.

THP_MEM_ALLOC_ENABLE (torch's switch for transparent huge pages on large CPU
allocations) is read by torch's CPU allocator once, when it starts, so it has to
be in the environment before torch is imported. ``python -m`` imports the
``minitorch_ext`` package (and with it torch) before this file runs, so when the
variable is not already what the run wants, we re-exec this same command line
with it set. The harness then checks that it took effect (huge pages behind a
fresh 64 MiB tensor) and says so in the table header.
"""
from __future__ import annotations

import argparse
import os
import sys

from . import FAMILIES

_REEXEC_GUARD = "_MINITORCH_EXT_BENCH_REEXEC"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minitorch_ext.bench",
        description=(
            "Time minitorch_ext against native torch in the same process, on the same inputs, "
            "interleaved (ours, native, ours, native, ...), median of many runs; print ours ms, "
            "native ms, speedup (native/ours), achieved GB/s and % of the copy bandwidth "
            "measured in the same run."
        ),
        epilog=(
            "families: " + ", ".join(FAMILIES) + ", all.  "
            "THP_MEM_ALLOC_ENABLE=1 is set for both sides unless --no-thp "
            "(a fresh 32 MB CPU output costs ~13 ms of page faults without it, ~3 ms with it)."
        ),
    )
    p.add_argument("families", nargs="*", metavar="FAMILY",
                   help="family to run (" + ", ".join(FAMILIES) + "), several, or 'all'")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device (default: cpu)")
    p.add_argument("--backend", choices=("cpp", "triton", "all"), default=None,
                   help="our backend(s) to time (default: every backend available for the device; "
                        "triton is skipped on cpu: its interpreter is far too slow to time)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads(N) (default: torch's default, printed in the header)")
    p.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run, noisier)")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="timing budget per case and backend, all sides together "
                        "(default: 1.5 on cpu, 0.5 on cuda; 0.3 / 0.15 with --quick)")
    p.add_argument("--filter", default=None, metavar="REGEX",
                   help="run only cases whose 'case dtype pass' matches REGEX (re.search), "
                        "e.g. '8192x1024 float32'")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the rows as a JSON list")
    p.add_argument("--no-thp", action="store_true",
                   help="run without THP_MEM_ALLOC_ENABLE=1 (sets it to 0)")
    p.add_argument("--no-cache", action="store_true",
                   help="ours allocate CPU outputs with torch's allocator too, not minitorch_ext's caching "
                        "allocator (sets MINITORCH_EXT_CPU_CACHE_MB=0)")
    p.add_argument("--self-test", action="store_true",
                   help="time native torch against itself as 'ours' (backend 'self'): checks the "
                        "harness (speedups should be ~1.00x) without calling any minitorch_ext kernel")
    p.add_argument("--list", action="store_true", help="list the families and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    from_cli = argv is None
    args = build_parser().parse_args(sys.argv[1:] if from_cli else argv)
    if args.list:
        print("\n".join(FAMILIES))
        return 0
    if not args.families:
        build_parser().error("name a family (" + ", ".join(FAMILIES) + ") or 'all'")

    want = "0" if args.no_thp else "1"
    if os.environ.get("THP_MEM_ALLOC_ENABLE") != want:
        if "torch" in sys.modules and from_cli:
            if os.environ.get(_REEXEC_GUARD):
                print(f"minitorch_ext.bench: could not set THP_MEM_ALLOC_ENABLE={want}", file=sys.stderr)
                return 2
            env = dict(os.environ, THP_MEM_ALLOC_ENABLE=want, **{_REEXEC_GUARD: "1"})
            sys.stdout.flush()
            sys.stderr.flush()
            # sys.orig_argv keeps the interpreter's own flags (-X ..., -u, ...)
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
        # torch not loaded yet (or called as a function): setting it now is early
        # enough or, if torch's allocator already started, the header will say THP is off.
        os.environ["THP_MEM_ALLOC_ENABLE"] = want

    if args.no_cache:  # read by the C++ cache at its first allocation, which comes later
        os.environ["MINITORCH_EXT_CPU_CACHE_MB"] = "0"

    from .harness import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
