"""Running a trained model: decoding strategies and generation with a KV cache (chapter 02).

- :mod:`llmlab.inference.generation`: logit processors (temperature, top-k, top-p, min-p,
  repetition penalty, no-repeat n-gram), :func:`generate` with and without the cache, beam
  search, and an adapter that gives a transformers model the same interface.

Chapter 08 adds batching, a paged cache, speculative decoding and serving here.
"""
