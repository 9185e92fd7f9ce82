"""Peak memory of each compressed SmolLM2, one variant per fresh process.

A process's resident memory keeps what earlier work left behind (the fp32 model a variant was
built from, the allocator's free lists), so two variants measured in one process do not
compare. :func:`peak_memory` starts ``python -m llmlab.compress.memory VARIANT`` for each one:
the child imports what it needs and notes its resident size (the *baseline*: Python, torch,
transformers), loads SmolLM2 in fp32 (copied out of the file it maps, so that the weights are
the process's own memory), builds the variant in place, lets go of what it no longer
needs, notes the resident size again (*at rest*: the weights as the variant holds them), then
generates greedily at one batch size with the kernel's high-water mark reset
(:func:`~llmlab.compress.evaluate.peak_memory_during`): the *peak* adds the KV cache, the
activations and the logits. Numbers are reported over the baseline, in MB (2**20 bytes).

Memory depends on the shapes, not on which channels, groups or layers a pruning method keeps,
nor on the values of low-rank factors: the structured and low-rank variants here keep the same
*number* of each as chapter 05's notebooks (the first ones, and a plain SVD), without the
calibration that chose them. The child sets ``MALLOC_MMAP_THRESHOLD_`` so that freed weight
buffers go back to the system and the at-rest size is the variant's, not its fp32 source's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

__all__ = ["VARIANTS", "build_variant", "peak_memory"]

#: The variants :func:`peak_memory` can build, with what each does to SmolLM2 (in place).
VARIANTS = {
    "fp32": "as loaded (also what a fake-quantized or dense-zeros pruned model holds)",
    "bf16": "every weight cast to bfloat16",
    "int8 dynamic, FBGEMM (quantize_dynamic)": "torch.ao quantize_dynamic on every nn.Linear",
    "W8A8 dynamic (ours, torch._int_mm)": "llmlab.compress.int8.quantize_linears",
    "4-bit zero-point g64, ours (Int4Linear)": "llmlab.compress.int4.quantize_linears_4bit",
    "NF4, bitsandbytes (Linear4bit)": "bitsandbytes Linear4bit, NF4, blocks of 64, fp32 compute",
    "FFN channels, keep 50%": "every MLP keeps half its channels",
    "attention groups, drop a third": "a third of the key/value groups removed, spread over the layers",
    "layers, drop a fifth": "the last fifth of the decoder layers removed",
    "low rank, 50% of the numbers": "every linear but the head factorised at half its numbers",
}


def _drop_groups(model):
    from llmlab.compress.prune import _group_width, keep_attention_groups

    layers = model.model.layers
    groups = _group_width(layers[0].self_attn)[1]
    n_drop = max(1, round(len(layers) * groups / 3))
    dropped = [0] * len(layers)
    for i in range(n_drop):  # one more group from each layer in turn, never a layer's last
        layer = i % len(layers)
        if dropped[layer] < groups - 1:
            dropped[layer] += 1
    for layer, n in zip(layers, dropped, strict=True):
        keep_attention_groups(layer.self_attn, list(range(n, groups)))
    return model


def build_variant(model, name: str):
    """Turn SmolLM2 (a transformers Llama in fp32) into the variant ``name`` of :data:`VARIANTS`,
    in place where the method allows; return it."""
    import warnings

    import torch

    from llmlab.compress import int4, int8, lowrank, prune

    if name not in VARIANTS:
        raise ValueError(f"name: expected one of {sorted(VARIANTS)}, got {name!r}")
    if name == "fp32":
        return model
    if name == "bf16":
        return model.to(torch.bfloat16)
    if name.startswith("int8 dynamic"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notice (chapter 05.4)
            return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear},
                                                          dtype=torch.qint8, inplace=True)  # fmt: skip
    if name.startswith("W8A8"):
        return int8.quantize_linears(model)
    if name.startswith("4-bit"):
        return int4.quantize_linears_4bit(model, "zeropoint", 64)
    if name.startswith("NF4"):
        return int4.nf4_bitsandbytes(model)
    if name.startswith("FFN"):
        for layer in model.model.layers:
            prune.keep_ffn_channels(layer.mlp, list(range(layer.mlp.down_proj.in_features // 2)))
        return model
    if name.startswith("attention groups"):
        return _drop_groups(model)
    if name.startswith("layers"):
        n = len(model.model.layers)
        return prune.drop_layers(model, list(range(n - max(1, round(n / 5)), n)))
    return lowrank.factorize_linears(model, 0.5)


def _release() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass  # not glibc: freed memory may stay resident


def _measure(name: str, smoke: bool, batch: int, new_tokens: int) -> dict[str, Any]:
    """In this process (a fresh one): baseline, at-rest and peak resident MB (see the module's
    docstring). A tiny model goes through the same steps first, so that the code every step
    imports and the tokenizer are in the baseline rather than counted as the model's."""
    import torch

    from llmlab import assets
    from llmlab.compress import evaluate

    warm, tok = assets.tiny_smollm2()
    evaluate.generation_speed(build_variant(warm, name), tok, batch, 2, repeats=1)
    del warm
    _release()
    _, baseline, _ = evaluate.peak_memory_during(lambda: None)
    model = assets.tiny_smollm2(seed=1)[0] if smoke else assets.load_smollm2(device="cpu")[0]
    with torch.no_grad():  # own the weights: loaded ones map the file, and pages of a mapped
        for t in [*model.parameters(), *model.buffers()]:  # file count as resident once read
            t.data = t.data.clone()
    _release()  # the file's mapping goes with the last tensor that used it
    model = build_variant(model, name)
    _release()
    rate, at_rest, peak = evaluate.peak_memory_during(
        lambda: evaluate.generation_speed(model, tok, batch, new_tokens, repeats=1)
    )
    if baseline is None or peak is None:
        return {"variant": name, "baseline_mb": None, "at_rest_mb": None, "peak_mb": None}
    return {"variant": name, "baseline_mb": baseline, "at_rest_mb": at_rest - baseline,
            "peak_mb": peak - baseline, "batch": batch, "new_tokens": new_tokens,
            "tokens_per_s": rate}  # fmt: skip


def peak_memory(
    name: str, smoke: bool = False, batch: int = 8, new_tokens: int = 16, timeout: float = 600
) -> dict[str, Any]:
    """Measure the variant ``name`` of :data:`VARIANTS` in a fresh Python process: a dict with
    ``baseline_mb`` (the bare process), and over it ``at_rest_mb`` (the model held) and
    ``peak_mb`` (during greedy generation of ``new_tokens`` tokens at ``batch``); None values
    where the platform cannot say (not Linux). ``smoke``: the tiny random SmolLM2."""
    from llmlab.validate import require_positive_int

    if name not in VARIANTS:
        raise ValueError(f"name: expected one of {sorted(VARIANTS)}, got {name!r}")
    require_positive_int(batch, "batch")
    require_positive_int(new_tokens, "new_tokens")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(_threads()))
    args = [sys.executable, "-m", "llmlab.compress.memory", name, str(batch), str(new_tokens)]
    done = subprocess.run(args + (["--smoke"] if smoke else []), capture_output=True, text=True,
                          env=env, timeout=timeout)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"measuring {name!r} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    variant, b, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(_measure(variant, "--smoke" in sys.argv, b, n)))
