"""Checks of chapter 06's labs, one module per lab.

01_router            -> :mod:`.router`
02_dispatch_combine  -> :mod:`.dispatch`
"""
