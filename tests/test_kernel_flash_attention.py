"""llmlab.kernels.flash_attention: the Triton kernels equal the reference, forward and backward.

On the CPU the kernels run in Triton's interpreter (float32, tiny shapes, blocks of 16 or 32):
tests that need it ask for the ``interpret`` fixture, which sets TRITON_INTERPRET=1 for that
test only (the module picks interpreter or GPU compiler at launch, so import order does not
matter, with or without pytest-xdist). GPU tests (marked ``gpu``) skip without CUDA.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from kernel_testing import requires_cuda

from llmlab import kernels
from llmlab.kernels import flash_attention as FA


@pytest.fixture
def interpret(monkeypatch):
    """Run Triton kernels in the CPU interpreter for this test (blocks of 16 unless changed)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(FA.INTERPRETER_BLOCKS, "BLOCK_M", 16)
    monkeypatch.setitem(FA.INTERPRETER_BLOCKS, "BLOCK_N", 16)
    assert kernels.backend().name == "interpreter"


def _qkv(batch, heads, seq_q, seq_k, head_dim, seed=0, device="cpu", dtype=torch.float32):
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(batch, heads, seq_q, head_dim, generator=g, device=device, dtype=dtype)
    k = torch.randn(batch, heads, seq_k, head_dim, generator=g, device=device, dtype=dtype)
    v = torch.randn(batch, heads, seq_k, head_dim, generator=g, device=device, dtype=dtype)
    return q, k, v


def _forward_backward(fn, q, k, v, do, **kwargs):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o = fn(q, k, v, **kwargs)
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), do)
    return o.detach(), dq, dk, dv


# --------------------------------------------------------------------------------------------
# The references
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_reference_matches_pytorch_sdpa(causal):
    q, k, v = _qkv(2, 3, 19, 19, 16)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(FA.reference(q, k, v, causal=causal), expected, atol=1e-5, rtol=1e-5)


def test_reference_scale_argument():
    q, k, v = _qkv(1, 2, 9, 11, 32)
    expected = F.scaled_dot_product_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(FA.reference(q, k, v, scale=0.3), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "seq_q, seq_k, causal, block",
    [
        (1, 1, False, 4),
        (17, 17, True, 4),
        (65, 65, True, 16),
        (65, 65, False, 32),
        (30, 47, False, 8),
        (47, 30, True, 16),
    ],
)
def test_tiled_reference_equals_reference(seq_q, seq_k, causal, block):
    q, k, v = _qkv(2, 3, seq_q, seq_k, 16, seed=seq_q)
    torch.testing.assert_close(
        FA.tiled_reference(q, k, v, causal=causal, block_size=block),
        FA.reference(q, k, v, causal=causal),
        atol=1e-5,
        rtol=1e-5,
    )


def test_tiled_reference_rejects_bad_block():
    q, k, v = _qkv(1, 1, 4, 4, 16)
    with pytest.raises(ValueError, match="block_size"):
        FA.tiled_reference(q, k, v, block_size=0)


# --------------------------------------------------------------------------------------------
# The kernels, in the interpreter
# --------------------------------------------------------------------------------------------

CASES = [
    # seq_q, seq_k, head_dim, causal, (BLOCK_M, BLOCK_N)
    (1, 1, 16, False, (16, 16)),
    (1, 1, 16, True, (16, 16)),
    (17, 17, 16, True, (16, 16)),
    (17, 17, 32, False, (32, 32)),
    (65, 65, 16, False, (16, 16)),
    (65, 65, 32, True, (32, 32)),
    (64, 64, 16, True, (16, 16)),  # lengths that are multiples of the block: no edge masks
    (33, 33, 16, True, (32, 16)),  # BLOCK_M > BLOCK_N
    (50, 50, 16, True, (16, 32)),  # BLOCK_M < BLOCK_N
    (17, 40, 16, False, (16, 16)),  # cross-attention: more keys than queries
    (40, 7, 32, False, (16, 16)),  # fewer keys than one block
]


@pytest.mark.parametrize("seq_q, seq_k, head_dim, causal, blocks", CASES)
def test_kernel_matches_reference(interpret, monkeypatch, seq_q, seq_k, head_dim, causal, blocks):
    monkeypatch.setitem(FA.INTERPRETER_BLOCKS, "BLOCK_M", blocks[0])
    monkeypatch.setitem(FA.INTERPRETER_BLOCKS, "BLOCK_N", blocks[1])
    q, k, v = _qkv(2, 3, seq_q, seq_k, head_dim, seed=seq_q + seq_k)
    do = torch.randn_like(q)
    ours = _forward_backward(FA.flash_attention, q, k, v, do, causal=causal)
    expected = _forward_backward(FA.reference, q, k, v, do, causal=causal)
    for name, a, b in zip(("o", "dq", "dk", "dv"), ours, expected, strict=True):
        torch.testing.assert_close(
            a, b, atol=2e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_kernel_custom_scale(interpret):
    q, k, v = _qkv(1, 2, 20, 20, 16, seed=3)
    do = torch.randn_like(q)
    ours = _forward_backward(FA.flash_attention, q, k, v, do, causal=True, scale=0.7)
    expected = _forward_backward(FA.reference, q, k, v, do, causal=True, scale=0.7)
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_kernel_accepts_strided_views(interpret):
    # Models keep (batch, seq, heads, head_dim) and transpose: the kernels read the strides,
    # no copy needed.
    x = torch.randn(2, 20, 3, 3 * 16)
    q, k, v = (t.transpose(1, 2) for t in x.split(16, dim=-1))
    assert not q.is_contiguous()
    do = torch.randn(2, 3, 20, 16)
    ours = _forward_backward(FA.flash_attention, q, k, v, do, causal=True)
    expected = _forward_backward(FA.reference, q, k, v, do, causal=True)
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_default_scale_is_one_over_sqrt_head_dim(interpret):
    q, k, v = _qkv(1, 1, 9, 9, 32)
    torch.testing.assert_close(
        FA.flash_attention(q, k, v),
        FA.reference(q, k, v, scale=1 / math.sqrt(32)),
        atol=2e-5,
        rtol=1e-4,
    )


# --------------------------------------------------------------------------------------------
# Dispatch and validation
# --------------------------------------------------------------------------------------------


def _bad_inputs():
    q, k, v = _qkv(2, 3, 8, 8, 16)
    return [
        ((q.numpy(), k, v), {}, TypeError, "q: expected a torch.Tensor"),
        ((q[0], k, v), {}, ValueError, r"q: expected shape \(batch, heads, seq, head_dim\)"),
        ((q, k[:, :2], v[:, :2]), {}, ValueError, r"k: expected shape \(2, 3, seq_k, 16\)"),
        ((q, k, v[..., :4, :]), {}, ValueError, "v: expected the shape of k"),
        ((q, k.double(), v.double()), {}, TypeError, "k: expected dtype"),
        ((q, k.half(), v.half()), {}, TypeError, "k, v: expected the dtype of q"),
        ((q.int(), k.int(), v.int()), {}, TypeError, "q: expected dtype"),
        (
            _qkv(1, 1, 4, 4, 48),
            {},
            ValueError,
            r"head_dim: expected one of \(16, 32, 64, 128\), got 48",
        ),
        (_qkv(1, 1, 4, 6, 16), {"causal": True}, ValueError, "causal: expected seq_q == seq_k"),
        ((q, k, v), {"causal": 1}, TypeError, "causal: expected a bool"),
        ((q, k, v), {"scale": -1.0}, ValueError, "scale: expected a positive finite float"),
        ((q, k, v), {"scale": "0.1"}, TypeError, "scale: expected a float or None"),
        (_qkv(1, 1, 0, 4, 16), {}, ValueError, "seq: expected at least one query"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_inputs())))
def test_rejects_bad_input(index):
    args, kwargs, error, words = _bad_inputs()[index]
    with pytest.raises(error, match=words):
        FA.flash_attention(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# The GPU path
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("head_dim", [16, 32, 64, 128])
def test_autotune_pruning_keeps_valid_configs(dtype, head_dim):
    triton = pytest.importorskip("triton")
    example = {"Q": torch.empty(1, dtype=dtype)}
    for configs, prune in (
        (FA._fwd_configs, FA._prune_fwd),
        (FA._bwd_dkdv_configs, FA._prune_dkdv),
        (FA._bwd_dq_configs, FA._prune_dq),
    ):
        for causal in (False, True):
            kept = prune(configs(triton), example, HEAD_DIM=head_dim, CAUSAL=causal)
            assert kept
    for c in FA._prune_dkdv(FA._bwd_dkdv_configs(triton), example, HEAD_DIM=head_dim, CAUSAL=True):
        assert c.kwargs["BLOCK_N"] % c.kwargs["BLOCK_M"] == 0


def test_kernels_compile_for_hopper():
    """Compile forward and backward kernels for sm_90a with Triton's bundled ptxas (no GPU):
    they build, use warp-group MMA (wgmma) and do not spill registers."""
    pytest.importorskip("triton")
    from llmlab.bench import compile_offline

    t, lse = torch.empty(1, dtype=torch.bfloat16), torch.empty(1)
    d, seq, heads = 64, 4096, 16
    strides = (heads * seq * d, seq * d, d)
    try:
        compile_offline(
            FA._bwd_delta, (t, t, lse, *strides, *strides, heads, seq), HEAD_DIM=d, BLOCK_M=64
        )
    except (ImportError, FileNotFoundError, RuntimeError) as err:  # no NVIDIA toolchain here
        pytest.skip(f"cannot compile for sm_90 here: {err}")
    common = {"HEAD_DIM": d, "PRECISION": "tf32", "EVEN_M": True, "EVEN_N": True}
    for causal in (False, True):
        meta = {**common, "CAUSAL": causal}
        fwd = compile_offline(
            FA._fwd,
            (t, t, t, t, lse, 0.18, *strides * 4, heads, seq, seq),
            num_warps=8,
            BLOCK_M=128,
            BLOCK_N=64,
            **meta,
        )
        dkdv = compile_offline(
            FA._bwd_dkdv,
            (t, t, t, t, t, t, lse, lse, 0.125, 0.18, *strides * 6, heads, seq, seq),
            num_warps=8,
            BLOCK_M=32,
            BLOCK_N=128,
            **meta,
        )
        dq = compile_offline(
            FA._bwd_dq,
            (t, t, t, t, t, lse, lse, 0.125, 0.18, *strides * 5, heads, seq, seq),
            num_warps=8,
            BLOCK_M=128,
            BLOCK_N=64,
            **meta,
        )
        for report in (fwd, dkdv, dq):
            assert report["warp_group_mma"], report
            assert report["stack_bytes"] in (0, None), report


def _low_precision_reference(q, k, v, causal):
    """Attention computed naively in the inputs' dtype: the error budget a 16-bit kernel gets."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [16, 32, 64, 128])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seq", [1000, 1024])
def test_gpu_matches_reference(dtype, head_dim, causal, seq):
    # As FlashAttention's own tests do: our error against a float32 reference must stay within
    # a small multiple of the error of plain attention computed in the same 16-bit dtype.
    q, k, v = _qkv(2, 4, seq, seq, head_dim, device="cuda", dtype=dtype)
    do = torch.randn_like(q)
    ours = _forward_backward(FA.flash_attention, q, k, v, do, causal=causal)
    exact = _forward_backward(
        FA.reference, q.float(), k.float(), v.float(), do.float(), causal=causal
    )
    naive = _forward_backward(_low_precision_reference, q, k, v, do, causal=causal)
    for name, a, ref, low in zip(("o", "dq", "dk", "dv"), ours, exact, naive, strict=True):
        error = (a.float() - ref).abs().max().item()
        budget = 2 * (low.float() - ref).abs().max().item() + 1e-3
        assert error <= budget, f"{name}: max error {error:.3g} > budget {budget:.3g}"


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_float32_and_cross_attention(causal):
    seq_k = 300 if causal else 517
    q, k, v = _qkv(2, 3, 300, seq_k, 64, device="cuda")
    do = torch.randn_like(q)
    ours = _forward_backward(FA.flash_attention, q, k, v, do, causal=causal)
    expected = _forward_backward(FA.reference, q, k, v, do, causal=causal)
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


@pytest.mark.gpu
@requires_cuda
def test_gpu_matches_sdpa_at_long_sequences():
    q, k, v = _qkv(1, 8, 4096, 4096, 128, device="cuda", dtype=torch.bfloat16)
    ours = FA.flash_attention(q, k, v, causal=True)
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, theirs, atol=2e-2, rtol=2e-2)
