"""Measure the neural LMs before the Transformer against a same-size GPT, on byte tokens.

    python tools/measure_neural_lms.py [--seconds 60] [--size small] [--steps N] [--json out.json]

For chapter 02's "three eras" notebook. Two experiments:

1. A copy task: [symbol, gap noise tokens, query] -> symbol. How many steps an Elman RNN, an
   LSTM and a GPT need to carry one token across 20 or 50 others (about 45 s in all).
2. Byte-level language modelling: an MLP (Bengio et al. 2003), an Elman RNN, an LSTM and a GPT
   of about the same number of parameters train for the same CPU-time budget on the docstring
   corpus read as bytes (chapter 03's byte-level set-up: vocabulary 256, the first 90% of the
   text for training, the rest for validation). Printed for each model: parameters, steps,
   tokens and seconds trained, validation loss (nats and bits per byte), the loss by position
   in a window (:func:`llmlab.models.loss_by_position`) and the gradient of the last
   prediction's loss with respect to the token k steps back
   (:func:`llmlab.models.gradient_by_distance`). Kneser-Ney byte n-grams give the counting
   era's numbers on the same validation targets.

Each model's step count is set from the CPU time of a few timed steps, so that it trains for
about ``--seconds`` of CPU time: with one thread (the default) that is about the wall time on
an idle core, however busy the machine is while measuring. ``--steps`` fixes the count
instead, for runs that must repeat exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from llmlab.data import RandomBatchSampler, docstring_corpus
from llmlab.data.toy import copy_batch
from llmlab.env import seed_everything
from llmlab.models import (
    GPT,
    GPTConfig,
    MLPLanguageModel,
    MLPLMConfig,
    RNNLanguageModel,
    RNNLMConfig,
    gradient_by_distance,
    loss_by_position,
)
from llmlab.models.ngram import NGramLM
from llmlab.training import TrainConfig, lm_loss, make_optimizer, train

BUCKETS = [(0, 4), (4, 16), (16, 64), (64, None)]  # positions 1-4, 5-16, 17-64, 65+
DISTANCES = [0, 1, 2, 4, 8, 16, 32, 64, 127]


# (config, peak learning rate) per model and size. The rates won 25-second pilot runs: 3e-3
# against 1e-2 at medium size, batch 16 (the MLP and LSTM preferred 1e-2, the Elman RNN 3e-3),
# and for the small GPT at batch 8, 3e-3 against 1e-3 and 1e-2.
SIZES = {
    "small": {  # about 0.15M parameters each
        "mlp": (MLPLMConfig(256, context=16, d_embed=16, d_hidden=256), 1e-2),
        "rnn": (RNNLMConfig(256, d_embed=32, d_hidden=256, cell="rnn"), 3e-3),
        "lstm": (RNNLMConfig(256, d_embed=32, d_hidden=144, cell="lstm"), 1e-2),
        "gpt": (dict(d_model=64, n_layers=3, n_heads=4), 3e-3),
    },
    "medium": {  # about 0.4M parameters each
        "mlp": (MLPLMConfig(256, context=16, d_embed=32, d_hidden=512), 1e-2),
        "rnn": (RNNLMConfig(256, d_embed=64, d_hidden=512, cell="rnn"), 3e-3),
        "lstm": (RNNLMConfig(256, d_embed=64, d_hidden=256, cell="lstm"), 1e-2),
        "gpt": (dict(d_model=128, n_layers=2, n_heads=4), 3e-3),
    },
}


def build(name: str, size: str, seq: int) -> tuple[torch.nn.Module, float]:
    """Model ``name`` of preset ``size`` and its learning rate."""
    if name not in SIZES[size]:
        raise ValueError(f"model: expected one of {sorted(SIZES[size])}, got {name!r}")
    config, lr = SIZES[size][name]
    if name == "mlp":
        return MLPLanguageModel(config), lr
    if name == "gpt":
        return GPT(GPTConfig(vocab_size=256, max_seq=seq, **config)), lr
    return RNNLanguageModel(config), lr


def cpu_seconds_per_step(model, sampler, config: TrainConfig, repeats: int = 4) -> float:
    """Median CPU time of one training step (forward, backward, optimizer) of ``model``.

    CPU time of this process, not wall time: with one thread it is close to the wall time the
    step takes on an idle core, however busy the machine is while we measure.
    """
    optimizer = make_optimizer(model, config)
    times = []
    for i in range(repeats + 1):
        x, y = sampler(10_000 + i)  # batches the run itself never sees
        start = time.process_time()
        lm_loss(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.process_time() - start)
    return sorted(times[1:])[repeats // 2]  # the first step warms up


def ngram_baselines(train_tokens, windows, orders) -> dict[str, float]:
    """Validation loss (nats per byte) of byte n-grams, scored on the same window targets."""
    out = {}
    stream = train_tokens.tolist()
    for n in orders:
        start = time.perf_counter()
        lm = NGramLM(n, vocab_size=256).fit([stream])
        nll = [x for w in windows.tolist() for x in lm.token_nll(w)]
        out[f"{n}-gram"] = sum(nll) / len(nll)
        print(f"  {n}-gram Kneser-Ney: {out[f'{n}-gram']:.3f} nats/byte "
              f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
    return out


def copy_task(gaps, seeds, max_steps: int = 600) -> dict:
    """Steps until each model copies a token across ``gap`` noise tokens, and its final loss.

    Only the copy is scored (the noise is unpredictable); any model that cannot see the first
    token scores log(4) = 1.386 nats at best. A run stops once its running loss is < 0.1.
    """
    vocab = 4 + 8 + 1
    makers = {
        "rnn": lambda gap: RNNLanguageModel(RNNLMConfig(vocab, 16, 64, cell="rnn")),
        "lstm": lambda gap: RNNLanguageModel(RNNLMConfig(vocab, 16, 64, forget_bias=3.0)),
        "gpt": lambda gap: GPT(GPTConfig(vocab, max_seq=gap + 2, d_model=32, n_layers=2, n_heads=2)),
    }  # fmt: skip
    out = {}
    for gap in gaps:
        for name, make in makers.items():
            runs = []
            for seed in seeds:
                torch.manual_seed(seed)
                model = make(gap)
                optimizer = torch.optim.Adam(model.parameters(), lr=1e-2 if name != "gpt" else 3e-3)
                generator = torch.Generator().manual_seed(seed)
                running, learned = math.log(4), None
                for step in range(max_steps):
                    x = copy_batch(generator, 64, gap)
                    loss = torch.nn.functional.cross_entropy(model(x[:, :-1])[:, -1], x[:, -1])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    running = 0.9 * running + 0.1 * loss.item()
                    if running < 0.1:
                        learned = step + 1
                        break
                test = copy_batch(torch.Generator().manual_seed(1000 + seed), 512, gap)
                runs.append((learned, loss_by_position(model, test)[-1].item()))
            out[f"{name} gap {gap}"] = runs
            print(f"  {name:>4}, gap {gap:3d}: " + ", ".join(
                f"{'not learned' if s is None else f'{s} steps'} (loss {loss:.3f})" for s, loss in runs))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="training budget per model, CPU seconds"
    )
    parser.add_argument("--steps", type=int, default=None, help="fixed steps instead of --seconds")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--corpus-bytes", type=int, default=None, help="default: all (1.7 MB)")
    parser.add_argument("--seq", type=int, default=128, help="bytes per training window")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=None, help="one rate for all (default: tuned)")
    parser.add_argument("--models", default="mlp,rnn,lstm,gpt")
    parser.add_argument("--ngram", default="1,3,5", help="n-gram orders ('' for none)")
    parser.add_argument("--eval-windows", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--copy-gaps", default="20,50", help="copy-task gaps ('' for none)")
    parser.add_argument("--json", default=None, help="write the numbers here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    corpus = docstring_corpus(max_bytes=args.corpus_bytes)
    tokens = torch.tensor(list(corpus.text.encode("utf-8")), dtype=torch.int64)
    cut = int(0.9 * len(tokens))
    train_tokens, val_tokens = tokens[:cut], tokens[cut:]
    seq = args.seq
    n_windows = min(args.eval_windows, (len(val_tokens) - 1) // seq)
    windows = val_tokens[: n_windows * seq + 1].unfold(0, seq + 1, seq)  # (n, seq + 1)
    sampler = RandomBatchSampler(train_tokens, args.batch, seq, seed=args.seed)
    print(f"{corpus.describe()}; {len(train_tokens):,} train bytes, validation: {n_windows} "
          f"windows of {seq} targets; {args.threads} threads, size {args.size}")  # fmt: skip

    results: dict = {"args": vars(args), "models": {}}
    if args.ngram:
        print("counting era (same validation targets; each window scored from its own start):")
        results["ngram"] = ngram_baselines(
            train_tokens, windows, [int(n) for n in args.ngram.split(",")]
        )

    if args.copy_gaps:
        print("copy task (learned: running loss < 0.1 within 600 steps of 64 sequences):")
        gaps = [int(g) for g in args.copy_gaps.split(",")]
        results["copy"] = copy_task(gaps, seeds=[args.seed, args.seed + 1])

    for name in [m for m in args.models.split(",") if m]:
        torch.manual_seed(args.seed)
        model, lr = build(name, args.size, seq)
        config = TrainConfig(
            steps=1, lr=args.lr or lr, weight_decay=0.1, label_smoothing=0.0, warmup_frac=0.05,
            min_lr_ratio=0.1, seed=args.seed,
        )  # fmt: skip
        per_step = cpu_seconds_per_step(build(name, args.size, seq)[0], sampler, config)
        config.steps = args.steps or max(1, int(args.seconds / per_step))
        start, cpu_start = time.perf_counter(), time.process_time()
        history = train(model, sampler, config, progress=False)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        by_position = loss_by_position(model, windows)
        grads = gradient_by_distance(model, windows[:64])
        val = by_position.mean().item()
        buckets = [by_position[lo:hi].mean().item() for lo, hi in BUCKETS]
        row = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "steps": config.steps,
            "tokens": history.tokens[-1],
            "lr": config.lr,
            "seconds": wall,
            "cpu_seconds": cpu,
            "cpu_seconds_per_step": per_step,
            "train_loss_last50": sum(history.loss[-50:]) / len(history.loss[-50:]),
            "val_loss": val,
            "val_bits_per_byte": val / math.log(2),
            "loss_by_bucket": dict(zip(["1-4", "5-16", "17-64", "65+"], buckets, strict=True)),
            "grad_by_distance": {k: grads[k].item() for k in DISTANCES if k < len(grads)},
        }
        results["models"][name] = row
        print(f"\n{name}: {row['parameters']:,} parameters, lr {config.lr:g}, {row['steps']} steps, "
              f"{row['tokens']:,} tokens in {cpu:.0f} CPU s ({wall:.0f} s wall), "
              f"{row['tokens'] / cpu:,.0f} tokens per CPU second")  # fmt: skip
        print(
            f"  validation loss {val:.3f} nats/byte = {row['val_bits_per_byte']:.3f} bits/byte "
            f"(train, last 50 steps: {row['train_loss_last50']:.3f})"
        )
        print(
            "  loss by position: "
            + ", ".join(f"{k} {v:.3f}" for k, v in row["loss_by_bucket"].items())
        )
        g0 = grads[0].item()
        print("  |d loss / d embedding| k back (relative to k=0): " + ", ".join(
            f"{k}: {grads[k].item() / g0:.1e}" for k in DISTANCES if k < len(grads)))  # fmt: skip

    # A model's loss at positions 17-64 minus 65+ mixes what it gains from context further
    # back with how hard those positions happen to be; the MLP (16 bytes, nothing further)
    # measures the second, so the difference to its gap is the first.
    print("\nsummary (validation nats/byte; gain: loss at positions 17-64 minus 65+, "
          "minus the MLP's)")  # fmt: skip
    models = results["models"]
    control = models["mlp"]["loss_by_bucket"] if "mlp" in models else None
    for name, row in models.items():
        b = row["loss_by_bucket"]
        gain = b["17-64"] - b["65+"] - (control["17-64"] - control["65+"] if control else 0.0)
        row["long_context_gain"] = gain
        far = row["grad_by_distance"].get(64, float("nan")) / row["grad_by_distance"][0]
        print(f"  {name:>5}: {row['val_loss']:.3f}  gain {gain:+.3f}  "
              f"gradient at k=64 / k=0: {far:.1e}  ({row['parameters']:,} parameters, "
              f"{row['steps']} steps, {row['cpu_seconds']:.0f} CPU s)")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
