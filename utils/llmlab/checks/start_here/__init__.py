"""Checks of chapter 00's labs, one module per lab: :mod:`.warmup`."""
