"""Post-training (chapter 04): from a pretrained model to one that follows instructions and
prefers better answers. One module per method, each written from its definition and tested
equal to the library everyone uses (peft, trl):

- :mod:`.finetune`  full fine-tuning, frozen lower layers, a classification head
- :mod:`.lora`      LoRA (merge, unmerge, save), QLoRA on an NF4 base, DoRA
- :mod:`.sft`       chat formatting, completion-only loss, packing, the SFT loop
- :mod:`.evaluate`  one evaluation protocol: greedy answers, exact match, held-out splits
- :mod:`.logprobs`  sequence log-probabilities of completions, KL to a reference
- :mod:`.reward`    reward models and the Bradley-Terry loss
- :mod:`.dpo`       direct preference optimisation (and IPO)
- :mod:`.grpo`      group-relative policy optimisation with verifiable rewards
- :mod:`.ppo`       PPO-RLHF: rollouts, value head, GAE, clipped surrogate, KL penalty

Import from the module: ``from llmlab.posttrain.lora import inject_lora``.
"""
