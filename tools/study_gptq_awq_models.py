"""How much of round-to-nearest's 4-bit loss GPTQ and AWQ take back, on owned full-precision
models of two widths trained with two optimizers (chapter 05, notebook 5, section 6).

    .venv/bin/python tools/study_gptq_awq_models.py            # about 12 minutes on 2 cores
    .venv/bin/python tools/study_gptq_awq_models.py --out /tmp/study.json
    .venv/bin/python tools/study_gptq_awq_models.py --smoke --out /tmp/smoke.json   # seconds

Each variant is the course's docstring LM recipe (``llmlab.compress.reference_lm.RECIPE``:
4 layers, 1,200 steps of 8 x 128 tokens, the standard library's docstrings, bf16 autocast,
fp32 weights) with one or two changes: ``d_model`` 128 (the course's model) or 256 (``d_ff``
3 d), Muon (the course's) or AdamW at the learning rate of :data:`LR_SWEEP` that trained best. Models come from the course cache, trained and saved the
first time (``reference_lm.docstring_lm(**changes)``). For each: calibration on 64 windows of
128 tokens of its training split, evaluation on 384 windows of its test split (notebook 5's
protocol), RTN / GPTQ / GPTQ act-order / AWQ at 4 and 3 bits in groups of 64 with an integer
zero point (``gptq.compare_methods``), the share of RTN's gap each takes back with a 95%
bootstrap interval over windows (``evaluate.gap_closed``), and how loud the layers' inputs
are (``gptq.loudness``). The record is written to
``benchmarks/results/cpu-2core/gptq_awq_models.json`` (atomically), which notebook 5 reads.
``--smoke`` runs the same on the tiny smoke recipe and a few windows (for tests; its numbers
mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "d_model 128, Muon (the course's)": {},
    "d_model 128, AdamW": {"optimizer": "adamw", "lr": 6e-3},
    "d_model 256, Muon": {"d_model": 256, "d_ff": 768},
    "d_model 256, AdamW": {"d_model": 256, "d_ff": 768, "optimizer": "adamw", "lr": 1e-3},
}
# AdamW's learning rate: the lowest final training loss (the mean of the last 50 steps) of those
# tried, on 2026-12-05: d_model 128: 1e-3 4.093, 3e-3 (the recipe's) 3.758, 6e-3 3.726;
# d_model 256: 1e-3 3.654, 3e-3 4.054. Muon's runs keep the recipe (muon_lr 0.02, lr 3e-3).
LR_SWEEP = {"d_model 128": {"0.001": 4.093, "0.003": 3.758, "0.006": 3.726},
            "d_model 256": {"0.001": 3.654, "0.003": 4.054}}  # fmt: skip
CALIB_WINDOWS, TEST_WINDOWS, WINDOW, GROUP, BITS = 64, 384, 128, 64, (4, 3)


def measure(label: str, changes: dict, smoke: bool = False) -> dict:
    from llmlab.compress import evaluate as E
    from llmlab.compress import gptq as G
    from llmlab.compress import reference_lm as R

    t0 = time.perf_counter()
    if smoke:  # half the widths: the smoke recipe's d_model 64, or 128 for the wide variants
        changes = {k: v // 2 if k in ("d_model", "d_ff") else v for k, v in changes.items()}
    ref = R.docstring_lm(smoke=smoke, **changes)
    model = ref.model.float().eval()
    n_calib, n_test, window = (2, 4, 32) if smoke else (CALIB_WINDOWS, TEST_WINDOWS, WINDOW)
    calib = R.calibration_windows(ref, n_calib, window)
    windows = R.test_windows(ref, n_test, window)
    inputs = G.collect_hessians(model, calib.split(2))
    loud = G.loudness(inputs)
    rows = G.compare_methods(model, inputs, windows, bits=BITS, group_size=GROUP, awq_grid=10)
    base = rows["fp32"]["nll"]
    record = {
        "variant": label,
        "changes": changes,
        "parameters": ref.info["parameters"],
        "train_seconds": round(ref.info["seconds"], 1),
        "final_train_loss": round(ref.info["final_train_loss"], 4),
        "fp32_perplexity": round(float(base.mean().exp()), 3),
        "loudness_median": round(statistics.median(loud), 2),
        "loudness_max": round(max(loud), 2),
        "bits": {},
    }
    for b in BITS:
        rtn = rows[f"RTN {b}-bit"]["nll"]
        entry = {"rtn_gap_nats": round(float(rtn.mean() - base.mean()), 5), "closed": {}}
        for method in list(G.VARIANTS)[1:]:
            share, low, high = E.gap_closed(base, rtn, rows[f"{method} {b}-bit"]["nll"])
            entry["closed"][method] = {
                "share": round(share, 4),
                "low": round(low, 4),
                "high": round(high, 4),
                "layer_error_vs_rtn": round(rows[f"{method} {b}-bit"]["layer_error_vs_rtn"], 4),
            }
        record["bits"][str(b)] = entry
    record["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(record), flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--out", type=Path,
                        default=root / "benchmarks/results/cpu-2core/gptq_awq_models.json")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny models, a few windows")
    args = parser.parse_args(argv)

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(2)
    started = time.perf_counter()
    records = [measure(label, changes, args.smoke) for label, changes in VARIANTS.items()]
    study = {
        "name": "gptq_awq_models",
        "command": "python tools/study_gptq_awq_models.py",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "protocol": f"calibration {CALIB_WINDOWS} x {WINDOW} tokens of the training split; "
        f"evaluation {TEST_WINDOWS} x {WINDOW} tokens of the test split, each window alone; "
        f"groups of {GROUP}, integer zero point; AWQ: 10 values of alpha, clipping search",
        "adamw_lr_sweep_final_train_loss": LR_SWEEP,
        "seconds": round(time.perf_counter() - started, 1),
        "variants": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False, suffix=".tmp") as f:
        json.dump(study, f, indent=1)
        f.write("\n")
    os.replace(f.name, args.out)
    print(f"wrote {args.out.name} ({study['seconds']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
