"""The contract every kernel in llmlab.kernels keeps, checked for each registered kernel.

- it has a PyTorch ``reference``;
- in Triton's CPU interpreter (``TRITON_INTERPRET=1``) its public ops launch the Triton kernels
  and equal the reference, forward and backward, at small shapes that are not powers of two;
- the interpreter refuses half precision, naming the op's first argument (or, for an op whose
  first arguments are integer codes, its first float argument: ``Contract.float_arg``);
- with neither CUDA nor the interpreter, the ops run the reference and launch nothing.

An op with no backward (integer operands: ``int8_matmul``) declares ``forward_only=True``: its
inputs must not require grad, and only its outputs are compared.

A new kernel gets its entry in ``CONTRACTS``; its own test file keeps what is specific to it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from kernel_testing import gen

from llmlab import kernels
from llmlab.kernels import _common
from llmlab.kernels.launch import TritonKernel
from llmlab.nn.positional import rope_frequencies


@dataclass(frozen=True)
class Contract:
    """One public op of a kernel: ``module.<op>(*inputs(), **kwargs)`` must equal
    ``expected(module)(*inputs(), **kwargs)``; inputs that require grad are differentiated."""

    kernel: str
    op: str
    inputs: Callable[[], tuple]
    expected: Callable = lambda m: m.reference
    kwargs: dict = field(default_factory=dict)
    op_kwargs: dict = field(default_factory=dict)  # for the op only, e.g. a chunk size
    atol: float = 1e-5
    rtol: float = 1e-5
    forward_only: bool = False  # no backward: no input requires grad, outputs compared only
    float_arg: str | None = None  # the argument a half-precision refusal names (default: first)

    @property
    def module(self):
        return importlib.import_module(f"llmlab.kernels.{self.kernel}")

    def __str__(self) -> str:
        return f"{self.kernel}.{self.op}"


def _randn(*shape, seed: int, scale: float = 1.0, grad: bool = True) -> torch.Tensor:
    return (scale * torch.randn(shape, generator=gen(seed))).requires_grad_(grad)


def _rope_inputs():
    cos, sin = rope_frequencies(12, 9)  # a table longer than the sequence
    return _randn(2, 3, 7, 12, seed=1), cos, sin


def _rope_qk_inputs():
    tables = _randn(2, 7, 12, seed=3, grad=False), _randn(2, 7, 12, seed=4, grad=False)
    return _randn(2, 5, 7, 12, seed=1), _randn(2, 3, 7, 12, seed=2), *tables


def _int8(*shape, seed: int) -> torch.Tensor:
    return torch.randint(-128, 128, shape, generator=gen(seed), dtype=torch.int8)


def _int8_matmul_inputs():
    # K = 37: a K loop whose last step is partial; a per-row and a per-channel scale, a bias.
    scales = (_randn(n, seed=n, scale=0.01, grad=False).abs() for n in (5, 11))
    return _int8(5, 37, seed=1), _int8(11, 37, seed=2), *scales, _randn(11, seed=5, grad=False)


def _w4a16_inputs():
    # K = 48 in groups of 16: the last step of the interpreter's 32-column loop is partial.
    packed = torch.randint(0, 256, (13, 24), generator=gen(2), dtype=torch.uint8)
    scales = _randn(13, 3, seed=3, scale=0.1, grad=False).abs()
    zeros = 15 * torch.rand(13, 3, generator=gen(4))
    return _randn(2, 3, 48, seed=1), packed, scales, 16, zeros, None, _randn(13, seed=5)


def _moe_grouped_gemm_inputs():
    # 37 rows in 4 uneven segments, one empty; d_in 24 and d_out 20: partial tiles everywhere.
    counts = torch.tensor([10, 0, 20, 7])
    return _randn(37, 24, seed=1), _randn(4, 20, 24, seed=2, scale=0.2), counts


def _targets(n: int, classes: int, seed: int) -> torch.Tensor:
    t = torch.randint(0, classes, (n,), generator=gen(seed))
    t[1] = -100  # an ignored row
    return t


CONTRACTS = [
    Contract("softmax", "softmax", lambda: (_randn(3, 37, seed=1, scale=3.0),)),
    Contract(
        "flash_attention",
        "flash_attention",
        lambda: tuple(_randn(1, 3, 19, 16, seed=s) for s in (1, 2, 3)),
        kwargs={"causal": True},
        atol=2e-5,
        rtol=1e-4,
    ),
    Contract("rope", "rope", _rope_inputs),
    Contract(
        "rope",
        "rope_qk",
        _rope_qk_inputs,
        expected=lambda m: (
            lambda q, k, cos, sin: (m.reference(q, cos, sin), m.reference(k, cos, sin))
        ),
    ),
    Contract("swiglu", "swiglu", lambda: (_randn(5, 37, seed=1, scale=3.0), _randn(5, 37, seed=2))),
    Contract(
        "rmsnorm",
        "rms_norm",
        lambda: (_randn(7, 37, seed=1), (1.0 + _randn(37, seed=2, grad=False)).requires_grad_()),
        rtol=1e-4,
    ),
    Contract(
        "cross_entropy",
        "fused_linear_cross_entropy",
        lambda: (_randn(13, 8, seed=1), _randn(37, 8, seed=2), _targets(13, 37, seed=3)),
        op_kwargs={"chunk_size": 5},
        rtol=1e-4,
    ),
    Contract(
        "cross_entropy",
        "cross_entropy",
        lambda: (_randn(11, 37, seed=1, scale=3.0), _targets(11, 37, seed=2)),
        expected=lambda m: m.reference_logits,
    ),
    Contract(
        "int8_matmul",
        "int8_matmul",
        _int8_matmul_inputs,
        atol=0,  # exact: int32 sums, then the reference's float32 epilogue
        rtol=0,
        forward_only=True,
        float_arg="a_scale",
    ),
    Contract(
        "int8_matmul",
        "quantize_rowwise",
        lambda: (_randn(7, 37, seed=1, scale=3.0, grad=False),),
        expected=lambda m: m.reference_quantize_rowwise,
        atol=0,
        rtol=0,
        forward_only=True,
    ),
    Contract("w4a16", "w4a16_matmul", _w4a16_inputs, rtol=1e-4),
    Contract("moe_grouped_gemm", "grouped_matmul", _moe_grouped_gemm_inputs),
]


def _outputs_and_grads(fn, inputs: tuple, kwargs: dict):
    """Outputs of ``fn`` and the gradients of its inputs that require grad, for fixed upstream
    gradients."""
    inputs = tuple(
        t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
        for t in inputs
    )
    out = fn(*inputs, **kwargs)
    outs = out if isinstance(out, tuple) else (out,)
    upstream = [torch.randn(o.shape, generator=gen(99 + i)) for i, o in enumerate(outs)]
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(outs, leaves, upstream) if leaves else ()  # forward-only op
    return [o.detach() for o in outs], list(grads)


def _check_parity(contract: Contract) -> None:
    module = contract.module
    inputs = contract.inputs()
    differentiable = any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs)
    assert differentiable != contract.forward_only, (
        f"{contract}: forward_only={contract.forward_only}, but an input "
        f"{'requires' if differentiable else 'does not require'} grad"
    )
    ours = _outputs_and_grads(
        getattr(module, contract.op), inputs, {**contract.kwargs, **contract.op_kwargs}
    )
    expected = _outputs_and_grads(contract.expected(module), inputs, contract.kwargs)
    for kind, a_list, b_list in zip(("output", "gradient"), ours, expected, strict=True):
        assert len(a_list) == len(b_list)
        for i, (a, b) in enumerate(zip(a_list, b_list, strict=True)):
            torch.testing.assert_close(
                a,
                b,
                atol=contract.atol,
                rtol=contract.rtol,
                msg=lambda m, kind=kind, i=i: f"{contract} {kind} {i}: {m}",
            )


@pytest.fixture
def launches(monkeypatch):
    """Record the ``interpret`` flag of every Triton kernel launch."""
    seen = []
    launch = TritonKernel.launch

    def recording(self, grid, *args, interpret, **meta):
        seen.append(interpret)
        return launch(self, grid, *args, interpret=interpret, **meta)

    monkeypatch.setattr(TritonKernel, "launch", recording)
    return seen


# --------------------------------------------------------------------------------------------
# Every registered kernel has a contract and a reference
# --------------------------------------------------------------------------------------------


def test_every_registered_kernel_has_a_contract():
    registered = kernels.load_all()
    assert registered, "no kernel registered"
    assert set(registered) == {c.kernel for c in CONTRACTS}


@pytest.mark.parametrize("name", sorted(kernels.load_all()))
def test_kernel_module_has_a_reference(name):
    module = importlib.import_module(f"llmlab.kernels.{name}")  # registered under its module
    assert callable(getattr(module, "reference", None)), f"{name}: no reference()"
    assert not hasattr(module, "benchmarks"), f"{name}: benchmarks belong in llmlab.bench.specs"


# --------------------------------------------------------------------------------------------
# In the interpreter: the kernels run and equal the reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("contract", CONTRACTS, ids=str)
def test_interpreter_matches_reference(interpret, launches, contract):
    _check_parity(contract)
    assert launches and all(launches), f"{contract}: no Triton kernel ran in the interpreter"


@pytest.mark.parametrize("contract", CONTRACTS, ids=str)
def test_interpreter_refuses_half_precision(interpret, contract):
    op = getattr(contract.module, contract.op)
    first = contract.float_arg or next(iter(inspect.signature(op).parameters))
    half = [
        t.detach().half() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
        for t in contract.inputs()
    ]
    with pytest.raises(TypeError, match=f"^{first}: the Triton interpreter runs float32 only"):
        op(*half, **contract.kwargs, **contract.op_kwargs)


# --------------------------------------------------------------------------------------------
# Neither CUDA nor the interpreter: the reference runs
# --------------------------------------------------------------------------------------------


@pytest.fixture
def reference_backend(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("checks the fall-back of a machine without CUDA")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert kernels.backend().name == "reference"

    def no_launch(*args, **kwargs):
        raise AssertionError("a Triton kernel was launched on the reference path")

    monkeypatch.setattr(TritonKernel, "launch", no_launch)


@pytest.mark.parametrize("contract", CONTRACTS, ids=str)
def test_reference_path_without_cuda_or_interpreter(reference_backend, contract):
    _check_parity(contract)
    # Any supported dtype works there, not only the interpreter's float32.
    bf16 = [
        t.detach().bfloat16() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
        for t in contract.inputs()
    ]
    ours = getattr(contract.module, contract.op)(*bf16, **contract.kwargs, **contract.op_kwargs)
    expected = contract.expected(contract.module)(*bf16, **contract.kwargs)
    torch.testing.assert_close(ours, expected, atol=1e-2, rtol=2e-2)


# --------------------------------------------------------------------------------------------
# The dispatch helper itself
# --------------------------------------------------------------------------------------------


def test_dispatch_paths(monkeypatch):
    x = torch.zeros(2, 3)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(kernels, "backend", lambda: kernels.Backend("reference", "test"))
    assert _common.dispatch((x, "x")) == "reference"
    monkeypatch.setattr(kernels, "backend", lambda: kernels.Backend("native", "test"))
    assert _common.dispatch((x, "x")) == "reference"  # a CPU tensor on a GPU machine
    monkeypatch.setattr(kernels, "backend", lambda: kernels.Backend("interpreter", "test"))
    assert _common.dispatch((x, "x"), (x, "w")) == "interpreter"
    assert _common.dispatch((torch.zeros(0, 3), "x")) == "reference"  # nothing to launch
    with pytest.raises(TypeError, match=r"^w: the Triton interpreter runs float32 only, got "):
        _common.dispatch((x, "x"), (x.half(), "w"))


def test_shape_helpers():
    assert [_common.next_power_of_2(n) for n in (1, 2, 3, 37, 64)] == [1, 2, 4, 64, 64]
    assert [_common.cdiv(n, 16) for n in (1, 16, 17)] == [1, 1, 2]
    t = torch.randn(4, 6).t()  # last dim not contiguous: copied
    assert _common.as_rows(t).is_contiguous() and _common.as_rows(t).shape == (6, 4)
    rows = torch.randn(3, 10)[:, :7]  # strided rows: a view, no copy
    assert _common.as_rows(rows).data_ptr() == rows.data_ptr()
    assert _common.interpreter_meta(True, BLOCK=16) == {"BLOCK": 16}
    assert _common.interpreter_meta(False, BLOCK=16) == {}


def test_autotune_first_keeps_one_configuration(monkeypatch):
    from llmlab.kernels import launch

    monkeypatch.setenv("LLMLAB_AUTOTUNE", "first")
    assert launch.autotune_mode() == "first"
    keep_even = launch._first_of(
        lambda configs, named_args, **kw: [c for c in configs if c % 2 == 0]
    )
    assert keep_even([1, 2, 3, 4], {}) == [2]
    assert launch._first_of(None)([5, 6], {}) == [5]
    monkeypatch.setenv("LLMLAB_AUTOTUNE", "fastest")
    with pytest.raises(ValueError, match="LLMLAB_AUTOTUNE: expected one of"):
        launch.autotune_mode()
    monkeypatch.delenv("LLMLAB_AUTOTUNE")
    assert launch.autotune_mode() == "full"
