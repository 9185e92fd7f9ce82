"""Compression and quantization (chapter 05): smaller and faster models, each method written
from its definition and measured on SmolLM2 and on full-precision models the course owns.

- :mod:`.quant`     integer quantizers: absmax and zero-point, per tensor, channel or group
- :mod:`.int8`      int8 matmuls, LLM.int8, W8A8 (dynamic or calibrated), SmoothQuant
- :mod:`.gptq`      GPTQ and AWQ against round-to-nearest, from calibration inputs' X^T X
- :mod:`.distill`   knowledge distillation: the teacher's top-k logits and the KD loss
- :mod:`.qat`       quantization-aware training: a fixed grid and the straight-through estimator
- :mod:`.prune`     pruning: magnitude (per layer, global), Wanda and N:M masks; FFN channels,
                    attention groups and whole layers removed by importance
- :mod:`.lowrank`   low-rank factorisation: plain and activation-aware (whitened) SVD
- :mod:`.reference_lm` a full-precision LM the course owns (SmolLM2 offline is de-quantised Q4_1)
- :mod:`.int4`      a 4-bit weight-only linear layer (W4A16 layout), to measure 4 bits on a CPU
- :mod:`.evaluate`  the chapter's one perplexity protocol (text, windows, paired differences)
- :mod:`.memory`    peak memory of each compressed SmolLM2, one variant per fresh process

Import from the module: ``from llmlab.compress.quant import quantize``.
"""

import logging as _logging

# bitsandbytes logs, on import, that an optional fused kernel for NF4 inference on AVX512-BF16
# CPUs is missing (it would be fetched from the hub, which the course never calls); notebook
# 5 measures the path it takes instead and says so beside the number.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
