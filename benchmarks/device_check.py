"""One GPU session's benchmarks: every kernel at one or two shapes, within a time budget.

    python benchmarks/device_check.py --out /tmp/results --budget-s 400
    python benchmarks/device_check.py --cpu --out /tmp/smoke      # plumbing only, no GPU

A lent GPU comes with minutes, not hours: the full ``python -m llmlab.bench`` spends most of
its time in ``torch.compile`` (tens of seconds per shape) and in autotuning new attention
shapes. This script measures the machine once, then runs each benchmark's "quick" cases at
the sizes the course's goals name, in the order of those goals, with ``torch.compile`` at one
size per benchmark (a second pass merged into the same record), and stops starting new work
when the budget is spent. Each benchmark's JSON and plot are written as soon as it ends, so a
run cut short keeps what it measured. ``benchmarks/device_check.sh`` runs the GPU tests first,
then this.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from llmlab import bench

#: (benchmark, panel filter, x values, compile at (panel filter, x values) or None).
#: Ordered by the goals: softmax and RMSNorm bandwidth, FlashAttention against SDPA, fused
#: cross-entropy's memory, the MoE grouped GEMM against the loop, then the rest.
PLAN = [
    ("softmax", None, [4096, 16384], (None, [4096])),
    ("rmsnorm", None, [4096, 16384], (None, [4096])),
    ("flash_attention", "d=128", [4096], ("d=128, causal, forward", [4096])),
    ("cross_entropy", None, [32768, 128256], (None, [32768])),
    ("moe_grouped_gemm", None, None, None),
    ("swiglu", None, [8192], (None, [8192])),
    ("rope", None, [4096, 16384], (None, [4096])),
    ("int8_matmul", None, [1, 4096], (None, [4096])),
    ("w4a16", None, [1, 16], (None, [16])),
    ("flash_attention", "d=64", [4096], None),
    # The same row-wise kernels on 8x (softmax) and 4x (RMSNorm) as many rows: at the
    # specs' sizes (64-256 MB moved) a launch's fixed costs weigh on every provider.
    ("softmax_32k_rows", None, [4096, 16384], (None, [4096])),
    ("rmsnorm_64k_rows", None, [4096], (None, [4096])),
]

#: name: (benchmark it is derived from, rows per case)
MANY_ROWS = {"softmax_32k_rows": ("softmax", 32768), "rmsnorm_64k_rows": ("rmsnorm", 65536)}


def many_rows(base: bench.Benchmark, name: str, rows: int) -> bench.Benchmark:
    """``base`` with every case's ``rows`` set to ``rows`` (the CPU scale keeps its own)."""

    def cases(scale: str) -> list:
        if scale == "cpu":
            return base.cases(scale)
        return [
            bench.Case(f"{c.panel}, {rows} rows", c.x, {**c.params, "rows": rows})
            for c in base.cases(scale)
        ]

    return dataclasses.replace(
        base,
        name=name,
        title=f"{base.title}, {rows} rows",
        cases=cases,
        description=f"{base.description} (here: {rows} rows per case)",
    )


def merge(record: dict, extra: dict) -> dict:
    """``record`` with the ``compile`` entries of ``extra`` added, their speedups taken
    against ``record``'s own ``triton`` time for the same case."""
    ours = {
        (e["panel"], e["x"]): e["ms"]
        for e in record["results"]
        if e["provider"] == "triton" and "ms" in e
    }
    for entry in extra["results"]:
        if entry["provider"] != "compile":
            continue
        mine = ours.get((entry["panel"], entry["x"]))
        entry["triton_speedup"] = entry["ms"] / mine if mine and "ms" in entry else None
        record["results"].append(entry)
    record["stopped_at_deadline"] = record.get("stopped_at_deadline") or extra.get(
        "stopped_at_deadline", False
    )
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="results root")
    parser.add_argument("--budget-s", type=float, default=400.0, help="start nothing after this")
    parser.add_argument("--cpu", action="store_true", help="plumbing smoke run on the CPU")
    parser.add_argument("--only", default=None, help="comma-separated benchmark names")
    args = parser.parse_args(argv)

    import torch

    start = time.monotonic()
    deadline = start + args.budget_s
    if args.cpu:
        device, scale = torch.device("cpu"), "cpu"
    elif torch.cuda.is_available():
        device, scale = torch.device("cuda"), "quick"
    else:
        print("device_check: no CUDA device; use --cpu for a plumbing run")
        return 0
    machine = bench.measure_machine(device, quick=True)
    print(
        f"{machine.name}: copy {machine.peak_gbs:.0f} GB/s, "
        f"{machine.matmul_dtype} matmul {machine.peak_tflops:.1f} TFLOP/s (measured)",
        flush=True,
    )
    registry = bench.registry()
    for name, (base, rows) in MANY_ROWS.items():
        registry[name] = many_rows(registry[base], name, rows)
    only = set(args.only.split(",")) if args.only else None
    done: dict[str, dict] = {}
    summary = []
    for name, panel, xs, compile_at in PLAN:
        if only and name not in only:
            continue
        if time.monotonic() > deadline:
            print(f"budget spent: {name} ({panel or 'all panels'}) not run", flush=True)
            summary.append({"benchmark": name, "panel": panel, "skipped": "budget"})
            continue
        b = registry[name]
        t0 = time.monotonic()
        print(f"\n== {name} ({panel or 'all panels'})", flush=True)
        use_xs = None if args.cpu else xs  # the CPU scale has its own tiny sizes
        record = bench.run(
            b,
            machine,
            device,
            scale,
            panel=panel,
            xs=use_xs,
            compile_xs=[],  # no compile in the first pass
            deadline=deadline,
            log=lambda s: print(s, flush=True),
        )
        if compile_at and not args.cpu and time.monotonic() < deadline:
            compile_panel, compile_xs = compile_at
            extra = bench.run(
                b,
                machine,
                device,
                scale,
                providers=["compile"],
                panel=compile_panel,
                xs=compile_xs,
                deadline=deadline,
                log=lambda s: print(s, flush=True),
            )
            record = merge(record, extra)
        if name in done:  # a second plan line of the same benchmark (other panels)
            previous = done[name]
            previous["results"].extend(record["results"])
            record = previous
        done[name] = record
        if record["results"]:
            json_path, _ = bench.write(record, args.out)
            print("\n" + bench.format_table(record), flush=True)
            print(f"wrote {json_path} ({time.monotonic() - t0:.0f} s)", flush=True)
        summary.append(
            {"benchmark": name, "panel": panel, "seconds": round(time.monotonic() - t0, 1)}
        )
    (args.out / "device_check_summary.json").write_text(
        json.dumps({"seconds": round(time.monotonic() - start, 1), "steps": summary}, indent=1)
        + "\n"
    )
    print(f"\ndevice_check: {time.monotonic() - start:.0f} s in all", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
