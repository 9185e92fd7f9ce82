"""Launching Triton kernels: compiled for the GPU or interpreted on the CPU, decided per launch.

Every kernel module wraps its kernels in :class:`TritonKernel`. ``@triton.jit`` fixes at import
time (from ``TRITON_INTERPRET``) whether a kernel is compiled or interpreted; tests and
notebooks set the variable later, so we decide when the kernel is launched instead. This leans
on Triton internals (``JITFunction``, ``InterpretedFunction``, ``_LangPatchScope``) and is
tested with the Triton version in requirements.lock.
"""

from __future__ import annotations

import contextlib
import inspect

_TRITON_LANGUAGE_MODULES = ("triton.language", "triton.language.standard", "triton.language.random")
_CONVERTED: dict = {}


@contextlib.contextmanager
def _triton_library_for(interpret: bool):
    """Make Triton's own ``@jit`` helpers (``tl.max``, ``tl.sum``, ...) match the launch mode.

    ``@triton.jit`` reads ``TRITON_INTERPRET`` when a module is *imported*: imported without
    it, ``tl.max`` is a GPU-only function that the interpreter cannot call; imported with it,
    the GPU compiler cannot use it. A test or a notebook may set the variable after Triton was
    imported, so for the duration of a launch we swap in the other kind when needed (cached;
    a no-op in the usual case where they already match).
    """
    import importlib

    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    want, other = (
        (InterpretedFunction, JITFunction) if interpret else (JITFunction, InterpretedFunction)
    )
    standard = importlib.import_module("triton.language.standard")
    if isinstance(standard.max, want):  # the usual case: nothing to swap
        yield
        return
    # Why patch Triton's modules: without the swap, an interpreted kernel that calls tl.max
    # fails with "Cannot call @triton.jit'd outside of the scope of a kernel" (tl.max is a
    # JITFunction), and a GPU compile with interpreted helpers fails on an AssertionError in
    # Triton's code generator (checked with Triton 3.7.1).
    swapped = []
    for name in _TRITON_LANGUAGE_MODULES:
        module = importlib.import_module(name)
        for attr, value in list(vars(module).items()):
            if isinstance(value, other):
                key = (value.fn, want)
                if key not in _CONVERTED:
                    _CONVERTED[key] = want(value.fn)
                swapped.append((module, attr, value))
                setattr(module, attr, _CONVERTED[key])
    try:
        yield
    finally:
        for module, attr, value in reversed(swapped):
            setattr(module, attr, value)


@contextlib.contextmanager
def _undo_interpreter_patches():
    """Put back every attribute of ``triton.language`` that the interpreter patches.

    While it runs a kernel, the interpreter swaps parts of ``triton.language`` for NumPy
    versions. For calls of ``@jit`` helpers (``tl.max``, ``tl.sum``) Triton 3.x does not swap
    them back, and a GPU compilation later in the same process then fails. We record the
    original of each attribute the first time it is patched and restore them all afterwards.
    """
    try:
        from triton.runtime.interpreter import _LangPatchScope
    except ImportError:  # pragma: no cover - another Triton layout: nothing to undo
        yield
        return
    missing = object()
    originals: dict = {}
    set_attr = _LangPatchScope.set_attr

    def recording_set_attr(scope, obj, name, value):
        originals.setdefault((id(obj), name), (obj, name, getattr(obj, name, missing)))
        set_attr(scope, obj, name, value)

    # Why patch _LangPatchScope: InterpretedFunction.__call__ (a @jit helper called from an
    # interpreted kernel) patches triton.language.core through _patch_lang and drops the scope
    # it gets back, so ~60 of its functions (program_id, arange, ...) stay NumPy lambdas. The
    # next GPU compile in the process then fails with "Unsupported function referenced:
    # <function _patch_attr.<locals>.<lambda>>" (Triton 3.7.1). Recording every set_attr lets
    # us undo them all, whichever scope made them.
    _LangPatchScope.set_attr = recording_set_attr
    try:
        yield
    finally:
        _LangPatchScope.set_attr = set_attr
        for obj, name, value in originals.values():
            if value is missing:
                if name in vars(obj):
                    delattr(obj, name)
            else:
                setattr(obj, name, value)


#: ``LLMLAB_AUTOTUNE=first`` launches each autotuned kernel with the first configuration
#: its pruning keeps, instead of timing all of them (the default, ``full``). Correctness
#: tests on a GPU use it: tuning every new shape compiles 10-50 variants of a kernel.
AUTOTUNE_MODES = ("full", "first")


def autotune_mode() -> str:
    """``LLMLAB_AUTOTUNE`` (read when a kernel is first built): ``"full"`` or ``"first"``."""
    import os

    mode = os.environ.get("LLMLAB_AUTOTUNE", "full")
    if mode not in AUTOTUNE_MODES:
        raise ValueError(f"LLMLAB_AUTOTUNE: expected one of {AUTOTUNE_MODES}, got {mode!r}")
    return mode


def _first_of(prune):
    """An early-prune function keeping only the first configuration ``prune`` keeps."""

    def first(configs, named_args, **kwargs):
        kept = prune(configs, named_args, **kwargs) if prune else configs
        return list(kept)[:1]

    return first


class TritonKernel:
    """A Triton kernel that is compiled or interpreted when it is *launched*, not imported.

    ``@triton.jit`` decides at import time (from ``TRITON_INTERPRET``) whether to build a GPU
    kernel or an interpreted one, so a kernel decorated at import would ignore a variable set
    later by a test or a notebook. We keep the plain function and wrap it lazily, once per
    mode:

    - ``launch(grid, *args, interpret=True, **meta)`` runs it in Triton's CPU interpreter with
      the fixed meta-parameters ``interpret_meta`` (small blocks, so tests take seconds);
    - ``interpret=False`` JIT-compiles it for the GPU and, when ``autotune = (configs_factory,
      key, prune_fn_or_None)`` is given, tunes it over ``configs_factory(triton)``.

    ``heuristics`` (``{name: fn(args) -> value}``, as for ``triton.heuristics``) derive
    meta-parameters in both modes, after the block sizes are known. ``restore`` names the
    arguments a kernel overwrites in place: tuning runs the kernel once per candidate, so
    their values are saved before each trial and put back after it (Triton's
    ``restore_value``); without it the first call of a new shape computes on its own output. Kernels launched this way
    call only Triton built-ins and ``tl.*`` functions, never ``@jit`` helpers of their own.
    """

    def __init__(self, fn, autotune=None, heuristics=None, interpret_meta=None, restore=()):
        self.fn = fn
        self.autotune = autotune
        self.restore = tuple(restore)
        self.heuristics = heuristics
        self.interpret_meta = interpret_meta if interpret_meta is not None else {}
        self._compiled = None
        self._interpreted = None

    def launch(self, grid, *args, interpret: bool, **meta):
        with _triton_library_for(interpret):
            if interpret:
                if self._interpreted is None:
                    self._interpreted = self._build(interpret=True)
                with _undo_interpreter_patches():
                    return self._interpreted[grid](*args, **{**self.interpret_meta, **meta})
            if self._compiled is None:
                self._compiled = self._build(interpret=False)
            return self._compiled[grid](*args, **meta)

    def _build(self, interpret: bool):
        import triton
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction

        kernel = InterpretedFunction(self.fn) if interpret else JITFunction(self.fn)
        if self.heuristics:
            kernel = triton.heuristics(self.heuristics)(kernel)
        if self.autotune is not None and not interpret:
            configs, key, prune = self.autotune
            if autotune_mode() == "first":
                prune = _first_of(prune)
            options = {"prune_configs_by": {"early_config_prune": prune} if prune else None}
            if self.restore:  # arguments the kernel writes in place: put back after each trial
                options["restore_value"] = list(self.restore)
            if "cache_results" in inspect.signature(triton.autotune).parameters:
                options["cache_results"] = True  # keep the tuned choice on disk across runs
            kernel = triton.autotune(configs(triton), key=key, **options)(kernel)
        return kernel
