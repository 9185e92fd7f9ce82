"""Time and peak CPU memory of dense vs blocked sliding-window attention, and their log-log slopes.

    python tools/measure_sparse_attention.py [--seqs 512 1024 2048 4096 8192] [--window 128]
        [--n-global 0] [--heads 2] [--head-dim 64] [--threads 2] [--bidirectional] [--repeats 5]

For each length: one forward (no autograd) of :func:`llmlab.nn.sparse_attention.dense_sparse_attention`
(the (seq, seq) masked reference) and of :func:`~llmlab.nn.sparse_attention.blocked_sliding_window_attention`
on the same random q, k, v; the fastest of a few runs, the peak memory the call
allocates beyond its inputs, the score entries counted by ``attention_cost``, and the largest
difference between the two outputs. Then the slope of log(y) against log(seq): 2 for the dense
O(seq^2), 1 for the blocked O(seq * window).

Times on a CPU shared with other processes: with more threads than free cores, OpenMP's
threads wait for each other and single calls stall for hundreds of ms; ``--threads 1`` then
gives the steadier slopes.

Peak memory on the CPU: llmlab.env.peak_allocated_bytes (the profiler sees every allocation and free;
summed in time order, their running total's maximum is the peak).
"""

from __future__ import annotations

import argparse
import functools
import math
import time

import numpy as np
import torch

from llmlab.env import peak_allocated_bytes as peak_cpu_bytes
from llmlab.nn.sparse_attention import (
    attention_cost,
    blocked_sliding_window_attention,
    dense_sparse_attention,
)


def best_ms(fn, repeats: int) -> float:
    """The fastest of ``repeats`` calls, in ms, after one warm-up call.

    The fastest, not the median (``llmlab.bench.time_ms``): on a CPU shared with other
    processes every disturbance only adds time, so the minimum is the least disturbed run.
    """
    fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) * 1e3)
    return min(runs)


def slope(seqs: list[int], values: list[float]) -> float:
    """The exponent p of values ~ seq^p, by least squares on log-log axes."""
    return float(np.polyfit(np.log(seqs), np.log(values), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--n-global", type=int, default=0)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    causal = not args.bidirectional
    kwargs = {"window": args.window, "n_global": args.n_global, "causal": causal}
    print(
        f"batch 1, heads {args.heads}, head_dim {args.head_dim}, float32, window {args.window}, "
        f"n_global {args.n_global}, {'causal' if causal else 'bidirectional'}, "
        f"{args.threads} threads, forward only"
    )
    header = f"{'seq':>6} | {'dense ms':>9} {'dense MiB':>9} | {'block ms':>9} {'block MiB':>9}"
    print(header + f" | {'entries dense':>13} {'entries block':>13} | {'max |diff|':>10}")
    rows = []
    torch.manual_seed(0)
    for seq in args.seqs:
        q, k, v = (torch.randn(1, args.heads, seq, args.head_dim) for _ in range(3))
        row = {"seq": seq}
        with torch.no_grad():
            outputs = {}
            for name, fn in (
                ("dense", dense_sparse_attention),
                ("block", blocked_sliding_window_attention),
            ):
                call = functools.partial(fn, q, k, v, **kwargs)
                outputs[name] = call()
                row[f"{name} ms"] = best_ms(call, args.repeats)
                row[f"{name} MiB"] = peak_cpu_bytes(call) / 2**20
        row["entries dense"] = attention_cost(seq, args.head_dim)["score_entries"] * args.heads
        row["entries block"] = (
            attention_cost(seq, args.head_dim, args.window, args.n_global, causal)["score_entries"]
            * args.heads
        )
        diff = (outputs["dense"] - outputs["block"]).abs().max().item()
        rows.append(row)
        print(
            f"{seq:>6} | {row['dense ms']:>9.1f} {row['dense MiB']:>9.1f} | "
            f"{row['block ms']:>9.1f} {row['block MiB']:>9.1f} | "
            f"{row['entries dense']:>13,} {row['entries block']:>13,} | {diff:>10.1e}"
        )
    seqs = [r["seq"] for r in rows]
    print("log-log slopes (y ~ seq^p), all sizes" + ("" if len(seqs) < 4 else "; upper half"))
    upper = [i for i, s in enumerate(seqs) if s >= seqs[len(seqs) // 2]]
    for key in ("dense ms", "block ms", "dense MiB", "block MiB", "entries dense", "entries block"):
        values = [r[key] for r in rows]
        line = f"  {key:<13} p = {slope(seqs, values):.2f}"
        if len(seqs) >= 4:
            line += f"; {slope([seqs[i] for i in upper], [values[i] for i in upper]):.2f}"
        print(line)
    last = rows[-1]
    print(
        f"at seq {last['seq']}: blocked is {last['dense ms'] / last['block ms']:.1f}x faster "
        f"and needs {last['dense MiB'] / max(last['block MiB'], math.ulp(1.0)):.1f}x less memory"
    )


if __name__ == "__main__":
    main()
