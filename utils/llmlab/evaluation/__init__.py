"""Measuring models and texts, one definition each (chapter 09 adds benchmarks here).

- :mod:`llmlab.evaluation.perplexity`: perplexity, bits per byte, the sliding-window NLL of a
  token stream, the log-probability of a continuation.
- :mod:`llmlab.evaluation.text`: diversity and repetition of generated text (distinct-n,
  seq-rep-n) and the exact-match accuracy of an encoder-decoder.
"""

from llmlab.evaluation.perplexity import (
    bits_per_byte,
    perplexity,
    sliding_window_nll,
    token_log_probs,
)
from llmlab.evaluation.text import distinct_n, exact_match, repetition_rate

__all__ = [
    "perplexity",
    "bits_per_byte",
    "sliding_window_nll",
    "token_log_probs",
    "distinct_n",
    "repetition_rate",
    "exact_match",
]
