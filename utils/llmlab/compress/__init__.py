"""Compression and quantization (chapter 05): smaller and faster models, each method written
from its definition and measured on SmolLM2 and on full-precision models the course owns.

- :mod:`.quant`     integer quantizers: absmax and zero-point, per tensor, channel or group
- :mod:`.int8`      int8 matmuls, LLM.int8, W8A8 (dynamic or calibrated), SmoothQuant
- :mod:`.evaluate`  the chapter's one perplexity protocol (text, windows, paired differences)

Import from the module: ``from llmlab.compress.quant import quantize``.
"""
