"""Post-training (chapter 04): from a pretrained model to one that follows instructions and
prefers better answers. One module per method, each written from its definition and tested
equal to the library everyone uses (peft, trl):

- :mod:`.finetune`  full fine-tuning, frozen lower layers, a classification head
- :mod:`.lora`      LoRA (merge, unmerge, save), QLoRA on an NF4 base, DoRA
- :mod:`.soft_prompts`  classification as completion, prompt tuning, prefix tuning
- :mod:`.sft`       chat formatting, completion-only loss, packing, the SFT loop
- :mod:`.evaluate`  one evaluation protocol: greedy answers, exact match, held-out splits
- :mod:`.logprobs`  sequence log-probabilities of completions, KL to a reference
- :mod:`.reward`    reward models and the Bradley-Terry loss
- :mod:`.dpo`       direct preference optimisation (and IPO)
- :mod:`.grpo`      group-relative policy optimisation with verifiable rewards
- :mod:`.ppo`       PPO-RLHF: rollouts, value head, GAE, clipped surrogate, KL penalty
- :mod:`.domain`    domain adaptation: held-out files, line completion, continued pretraining

Import from the module: ``from llmlab.posttrain.lora import inject_lora``.
"""

import logging as _logging
import warnings as _warnings

# Two messages that would land in every notebook that uses bitsandbytes or peft on a CPU and say
# nothing about the lesson: bitsandbytes logs that an optional fused kernel for NF4 *inference*
# on AVX512-BF16 CPUs is not installed (lora.quantize_base_nf4 turns that path off anyway), and
# peft calls a transformers method that was renamed.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
_warnings.filterwarnings(
    "ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning
)
