"""Chapter 02's model families, built from chapter 01's blocks.

    >>> from llmlab.models import Llama, GPT, GPTConfig
    >>> model = Llama.from_smollm2()                 # SmolLM2-135M in our own code
    >>> cache = model.new_cache()
    >>> logits = model(prompt_ids, cache=cache)      # (batch, seq, vocab); then one token a call

Families: :class:`GPT` (decoder-only, learned positions), :class:`Bert` (encoder-only with
MLM and NSP heads), :class:`T5` (the :class:`EncoderDecoder` of chapter 01 with a relative
position bias),
:class:`Llama` (RMSNorm, RoPE, SwiGLU, GQA) and :class:`PaLM` (parallel block, multi-query
attention). :mod:`llmlab.models.counting` counts their parameters, FLOPs and bytes by
formula; :mod:`llmlab.models.ngram` holds the n-gram models they are measured against. Every causal LM (GPT, Llama, PaLM) takes ``model(input_ids, cache=None)`` and
``model.new_cache()`` (:class:`KVCache`).
"""

from llmlab.models.bert import Bert, BertOutput, bert_state_dict
from llmlab.models.causal_lm import CausalLM
from llmlab.models.configs import BertConfig, GPTConfig, LlamaConfig, PaLMConfig, T5Config
from llmlab.models.counting import (
    PUBLISHED,
    count_parameters,
    flops_per_token,
    matmul_parameters,
    parameter_breakdown,
)
from llmlab.models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from llmlab.models.gpt import GPT, gpt2_state_dict
from llmlab.models.llama import (
    Llama,
    llama_config_from_hf,
    llama_state_dict,
    load_smollm2_llama,
)
from llmlab.models.neural_lm import (
    ElmanCell,
    LSTMCell,
    MLPLanguageModel,
    MLPLMConfig,
    RNNLanguageModel,
    RNNLMConfig,
    RNNState,
    WindowState,
    gradient_by_distance,
    loss_by_position,
    recurrent_scan,
)
from llmlab.models.palm import PaLM
from llmlab.models.t5 import T5, t5_state_dict
from llmlab.nn.cache import KVCache

__all__ = [
    "KVCache",
    "CausalLM",
    "GPTConfig",
    "LlamaConfig",
    "PaLMConfig",
    "BertConfig",
    "T5Config",
    "EncoderDecoderConfig",
    "EncoderDecoder",
    "GPT",
    "Llama",
    "PaLM",
    "Bert",
    "BertOutput",
    "T5",
    "gpt2_state_dict",
    "llama_state_dict",
    "llama_config_from_hf",
    "load_smollm2_llama",
    "bert_state_dict",
    "t5_state_dict",
    "count_parameters",
    "parameter_breakdown",
    "matmul_parameters",
    "flops_per_token",
    "PUBLISHED",
    "MLPLMConfig",
    "MLPLanguageModel",
    "RNNLMConfig",
    "RNNLanguageModel",
    "WindowState",
    "RNNState",
    "ElmanCell",
    "LSTMCell",
    "recurrent_scan",
    "loss_by_position",
    "gradient_by_distance",
]
