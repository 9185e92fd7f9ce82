"""The layers every model of the course is built from (chapter 01).

- :mod:`llmlab.nn.attention`: scaled dot-product attention, masks, :class:`MultiHeadAttention`
  (MHA, GQA, MQA, cross-attention, a KV cache).
- :mod:`llmlab.nn.positional`: sinusoidal, learned, RoPE and ALiBi positions.
- :mod:`llmlab.nn.norms`: LayerNorm and RMSNorm from their formulas.
- :mod:`llmlab.nn.ffn`: the feed-forward sub-layer (ReLU, GELU, SwiGLU).
- :mod:`llmlab.nn.blocks`: encoder and decoder blocks, pre- or post-norm, parallel.
- :mod:`llmlab.nn.cache`: the KV cache of generation (chapter 08's paged cache extends it).
- :mod:`llmlab.nn.sparse_attention`: sliding-window attention with global tokens, blocked in
  O(seq * window) and equal to the dense masked reference.

Import the module you need (``from llmlab.nn.attention import MultiHeadAttention``).
"""
