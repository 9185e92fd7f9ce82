"""Checks of chapter 02's labs, one module per lab.

01_bpe         -> :mod:`.bpe`
02_llama_block -> :mod:`.llama_block`
03_top_p       -> :mod:`.top_p`
"""
