"""python -m minitorch_ext info   -- versions, what was compiled, which backends run where.
python -m minitorch_ext parity -- the parity table: every op against native torch on every backend here."""
from __future__ import annotations

import argparse
import platform
import sys


def cpu_features() -> list[str]:
    want = ["sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq",
            "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "neon", "asimd", "sve"]
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return [w for w in want if w in flags]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def info() -> None:
    import torch

    import minitorch_ext as mte

    b = mte.build_info()
    print(f"minitorch_ext {mte.__version__}")
    print(f"python        {platform.python_version()}")
    print(f"torch         {torch.__version__} (built against {b['torch_built_against']}, CUDA {torch.version.cuda})")
    try:
        import triton

        print(f"triton        {triton.__version__}")
    except ImportError:
        print("triton        not installed")
    print(f"cpu           {cpu_model()}, {torch.get_num_threads()} threads")
    print(f"cpu features  {' '.join(cpu_features()) or '(none detected)'}")
    print(f"compiled      CPU kernels for ISA '{b['cpu_isa']}'; CUDA kernels: "
          + (f"yes, archs {b['cuda_archs']}" if b["cuda"] else "no"))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible"
    print(f"gpu           {gpu}")
    from minitorch_ext import _backend

    for dev in ("cpu", "cuda"):
        ok = mte.available_backends(dev) if (dev == "cpu" or torch.cuda.is_available()) else []
        why = {bk: _backend._why_not(bk, dev) for bk in _backend.BACKENDS if bk not in ok}
        extra = "; ".join(f"{k}: {v}" for k, v in why.items() if v)
        if dev == "cuda" and not torch.cuda.is_available():
            extra = "no GPU visible"
        print(f"backends {dev:4s} {', '.join(ok) or '-'}" + (f"   ({extra})" if extra else ""))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minitorch_ext")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="versions, build, backends, CPU features")
    par = sub.add_parser("parity", help="every op against native torch on every backend here")
    par.add_argument("--json", help="also write the rows as JSON")
    args = p.parse_args(argv)
    if args.cmd == "info":
        info()
        return 0
    from minitorch_ext import parity

    return parity.main(json_path=args.json)


if __name__ == "__main__":
    sys.exit(main())
