"""Checks of chapter 04's labs, one module per lab.

01_lora_layer      -> :mod:`.lora_layer`
02_sft_loss_mask   -> :mod:`.sft_loss_mask`
03_reward_loss     -> :mod:`.reward_loss`
04_dpo_loss        -> :mod:`.dpo_loss`
05_grpo            -> :mod:`.grpo`
"""
