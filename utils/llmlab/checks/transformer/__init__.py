"""Checks of chapter 01's labs, one module per lab, and the tolerance they share.

01_attention_masks      -> :mod:`.attention_masks`
02_multi_head_attention -> :mod:`.multi_head_attention`
03_rope                 -> :mod:`.rope`
04_decoder_block        -> :mod:`.decoder_block`
"""

import torch

from llmlab.checks import compare_with

#: float32 results that sum over heads and projections differ from the reference by more than
#: float32's default tolerance when merely summed in another order; float64 keeps its own.
FLOAT32_TOLERANCE = compare_with(1e-5, 1e-4, dtypes=(torch.float32,))
