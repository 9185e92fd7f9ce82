"""Checks of chapter 07's labs, one module per lab.

01_ranking  -> :mod:`.ranking`
02_react    -> :mod:`.react`
"""
