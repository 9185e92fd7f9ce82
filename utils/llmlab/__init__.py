"""LLM Lab's shared package: models, training code, graders and kernels for the course.

Where things live (one home per concept; ch = the chapter that teaches it):

    basics (importable by everything)
      env             device choice, seeding, installed versions
      assets          the offline models (SmolLM2, MiniLM) and the course cache
      results         what one notebook saves for a later one (atomic, in the course cache)
      validate        input checks for configs and entry points (require_*)
      progress, plotting
      source          show(obj): the real source of what a chapter teaches, in the notebook
      diagrams        figures of structure (blocks, caches, tiling, pipelines) drawn by code
      sandbox         run untrusted code isolated: the grader, ch07's Python tool, ch09's pass@k
    what the course teaches
      nn/             ch01  attention, positional, norms, ffn, blocks, cache (the KV cache)
      models/         ch02  GPT, BERT, LLaMA, PaLM, encoder_decoder (+ T5), configs,
                            counting (parameters, FLOPs, bytes), ngram
      tokenization    ch02  byte-level BPE from scratch
      data/           ch03  corpora, tasks (verifiable, with graders), toy (seq2seq tasks),
                            clean, dedup, pii, packing
      training/       ch03  optim (AdamW, Muon, clipping), schedule, losses, loop,
                            checkpoints, objectives, scaling, seq2seq
      inference/      ch02  generation (decoding, KV-cache generation, beam search);
                      ch08 adds batching, the paged cache, speculative decoding, serving
      evaluation/     ch02-03  perplexity, text metrics; ch09 adds benchmarks
      kernels/        ch01-03  Triton kernels beside their PyTorch references
      posttrain/      ch04  finetune, lora (QLoRA, DoRA), sft, evaluate, logprobs, reward,
                            dpo, grpo, ppo, constitution, domain (continued pretraining)
      compress/       ch05  quant, int8, int4, gptq, distill, qat, prune, lowrank,
                            reference_lm, evaluate, memory
      moe/            ch06  router, losses, layer (experts, dense/loop/grouped), model, scale
      rag/            ch07  kb (a fictional knowledge base), corpora, chunking, embed (MiniLM's
                            mean pooling), index (exact, FAISS Flat/IVF/HNSW), bm25, fusion,
                            metrics, retriever (hybrid), reader (cited answers, the fine-tuned
                            reader), store (FAISS + SQLite, crash-safe), cache (semantic)
      agents/         ch07  tools (a registry with JSON-schema arguments; calculator by ast, dates,
                            Python in the sandbox, search), react (the step parser and the loop),
                            constrained (tool calls that parse by construction), tasks
                            (verifiable agent tasks and their scoring), traces (tool-use SFT)
      (home to come, created with its chapter: distributed/ ch08)
    the labs' checks and the machinery
      checks/         one module per lab, grouped by chapter (checks.<chapter>.<lab>)
      course/         chapters, labs generator, grading, notebooks, doctor, CLI
      bench/          the kernel benchmark harness
    The teaching code never imports checks/, course/ or bench/.

``import llmlab`` is kept fast: subpackages load on first use (``llmlab.env``,
``llmlab.models`` ...), and heavy libraries such as transformers are imported only inside the
functions that need them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = {
    # the basics, importable by everything
    "assets",
    "results",
    "env",
    "plotting",
    "progress",
    "validate",
    "source",
    "diagrams",
    "sandbox",
    # what the course teaches, by concept
    "nn",
    "models",
    "tokenization",
    "data",
    "training",
    "inference",
    "evaluation",
    "kernels",
    "posttrain",
    "compress",
    "moe",
    "rag",
    "agents",
    # the labs' checks, and the machinery (never imported by the teaching code)
    "checks",
    "course",
    "bench",
}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'llmlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES)
