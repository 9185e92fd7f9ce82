"""Checks of chapter 05's labs, one module per lab.

01_quantizers          -> :mod:`.quantizers`
02_distillation_loss   -> :mod:`.distillation_loss`
03_gptq                -> :mod:`.gptq`
04_pruning_masks       -> :mod:`.pruning_masks`
"""
