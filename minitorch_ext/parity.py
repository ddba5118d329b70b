"""The parity table: every op against native torch, on every backend this machine runs.

For each family's representative samples, each backend and dtype, the worst
error of our forward and of every gradient against a float64 reference, next
to native torch's own error on the same inputs, and the verdict of the
checker's tolerance rule. Exit status 1 if any row fails.
"""
from __future__ import annotations

import json
import os
import sys

import torch


def _reexec_for_interpreter() -> None:
    # Triton's interpreter must be switched on before triton is imported; with no
    # GPU, run this command again in a process that has it on.
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        os.environ["TRITON_INTERPRET"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "minitorch_ext", *sys.argv[1:]])


def rows(device: str):
    import minitorch_ext as mte
    from minitorch_ext import testing
    from minitorch_ext.cases import FAMILIES

    for family, specs in FAMILIES.items():
        for spec in specs():
            for backend in mte.available_backends(device):
                for dtype in (torch.float32, torch.bfloat16, torch.float64):
                    worst: dict = {}
                    status, note = "ok", ""
                    for sample in spec.extra["parity_samples"](backend):
                        try:
                            rep = testing.check_parity(spec, sample, backend, dtype, device=device)
                        except AssertionError as e:
                            status, note = "FAIL", str(e)
                            break
                        for k, (eo, en) in rep.items():
                            o, n = worst.get(k, (0.0, 0.0))
                            worst[k] = (max(o, eo), max(n, en))
                    for k, (eo, en) in worst.items():
                        yield dict(family=family, op=spec.name, backend=backend, device=device,
                                   dtype=str(dtype).replace("torch.", ""), output=k, ours_err=eo,
                                   native_err=en, status=status)
                    if status != "ok":
                        yield dict(family=family, op=spec.name, backend=backend, device=device,
                                   dtype=str(dtype).replace("torch.", ""), output="-", ours_err=float("nan"),
                                   native_err=float("nan"), status=status, note=note)


def main(json_path: str | None = None) -> int:
    _reexec_for_interpreter()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print("parity vs native torch: max |error| against a float64 reference "
          "(rule: ours <= factor x native + eps(dtype) x scale)")
    hdr = f"{'op':11s} {'backend':7s} {'device':6s} {'dtype':8s} {'output':12s} {'ours err':>10s} {'native err':>10s}  status"
    print(hdr)
    print("-" * len(hdr))
    out, failed = [], 0
    for device in devices:
        for r in rows(device):
            out.append(r)
            failed += r["status"] != "ok"
            print(f"{r['op']:11s} {r['backend']:7s} {r['device']:6s} {r['dtype']:8s} {r['output']:12s} "
                  f"{r['ours_err']:10.2e} {r['native_err']:10.2e}  {r['status']}")
            if r.get("note"):
                print("    " + r["note"])
    print(f"{len(out) - failed} rows ok, {failed} failed")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(out, f, indent=1)
    return 1 if failed else 0
