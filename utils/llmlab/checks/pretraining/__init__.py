"""Checks of chapter 03's labs, one module per lab.

01_minhash              -> :mod:`.minhash`
02_schedule_and_adamw   -> :mod:`.schedule_and_adamw`
03_training_step        -> :mod:`.training_step`
04_mlm_collator         -> :mod:`.mlm_collator`
05_power_law            -> :mod:`.power_law`
"""
