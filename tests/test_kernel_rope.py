"""llmlab.kernels.rope: the Triton kernel equals chapter 01's apply_rotary, forward and backward.

On the CPU the kernel runs in Triton's interpreter (the ``interpret`` fixture sets
TRITON_INTERPRET=1 for one test); the kernel module decides between interpreter and GPU
compiler at launch. GPU tests (marked ``gpu``) skip without CUDA.
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import gen as _gen
from kernel_testing import requires_cuda

from llmlab import bench
from llmlab.kernels import rope as R
from llmlab.kernels._common import next_power_of_2
from llmlab.nn.positional import RotaryEmbedding, apply_rotary, rope_frequencies


def _tables(kind: str, batch: int, seq: int, head_dim: int, seed: int = 0):
    """cos/sin in each layout the op accepts; "random" breaks the c1 == c2 symmetry of real
    tables, so that both halves of the formula (and of its backward) are exercised."""
    if kind == "table":  # (max_seq, head_dim), longer than seq
        return rope_frequencies(head_dim, seq + 3)
    if kind == "per_batch":  # (batch, seq, head_dim) from RotaryEmbedding, offset positions
        positions = torch.arange(seq).expand(batch, seq) + torch.arange(batch)[:, None] * 7
        return RotaryEmbedding(head_dim)(positions)
    if kind == "broadcast":  # (1, seq, head_dim)
        return RotaryEmbedding(head_dim)(torch.arange(seq)[None])
    g = _gen(seed)
    return torch.randn(batch, seq, head_dim, generator=g), torch.randn(
        batch, seq, head_dim, generator=g
    )


def _check_against_apply_rotary(x: torch.Tensor, cos, sin, atol: float = 1e-6):
    """Forward and input gradient of rope() against apply_rotary, in float32."""
    x_ours = x.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y_ours = R.rope(x_ours, cos, sin)
    y_ref = apply_rotary(x_ref, cos, sin)
    assert y_ours.grad_fn is not None and "Rope" in type(y_ours.grad_fn).__name__
    torch.testing.assert_close(y_ours, y_ref, atol=atol, rtol=1e-5)
    dy = torch.randn(y_ref.shape, generator=_gen(1))
    y_ours.backward(dy)
    y_ref.backward(dy)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=atol, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# The reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["table", "per_batch", "random"])
def test_reference_backward_matches_autograd(kind):
    x = torch.randn(2, 3, 5, 8, generator=_gen(2), requires_grad=True)
    cos, sin = _tables(kind, 2, 5, 8)
    y = apply_rotary(x, cos, sin)
    dy = torch.randn(y.shape, generator=_gen(3))
    (expected,) = torch.autograd.grad(y, x, dy)
    torch.testing.assert_close(R.reference_backward(dy, cos, sin), expected)


def test_backward_of_angle_tables_is_the_rotation_by_minus_theta():
    # For real tables (c1 = c2, s1 = s2) the gradient is the rotation by -theta: rope with -sin.
    cos, sin = rope_frequencies(16, 9)
    dy = torch.randn(1, 2, 9, 16, generator=_gen(4))
    torch.testing.assert_close(R.reference_backward(dy, cos, sin), apply_rotary(dy, cos, -sin))


# --------------------------------------------------------------------------------------------
# The kernel, in the interpreter
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 1, 2), (2, 3, 5, 12), (3, 2, 7, 6), (1, 5, 4, 64)])
@pytest.mark.parametrize("kind", ["table", "per_batch", "broadcast", "random"])
def test_kernel_matches_apply_rotary(interpret, shape, kind):
    # Odd head counts and half head dims (3, 5: not powers of two) exercise the masks.
    batch, _, seq, head_dim = shape
    x = torch.randn(shape, generator=_gen(sum(shape)))
    cos, sin = _tables(kind, batch, seq, head_dim, seed=seq)
    _check_against_apply_rotary(x, cos, sin)


def test_rope_qk_with_grouped_query_heads(interpret):
    q = torch.randn(2, 6, 5, 12, generator=_gen(5), requires_grad=True)
    k = torch.randn(2, 2, 5, 12, generator=_gen(6), requires_grad=True)
    cos, sin = _tables("per_batch", 2, 5, 12)
    q_rot, k_rot = R.rope_qk(q, k, cos, sin)
    q_ref, k_ref = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    torch.testing.assert_close(q_rot, q_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(k_rot, k_ref, atol=1e-6, rtol=1e-5)
    dq, dk = torch.randn(q.shape, generator=_gen(7)), torch.randn(k.shape, generator=_gen(8))
    ours = torch.autograd.grad((q_rot, k_rot), (q, k), (dq, dk))
    theirs = torch.autograd.grad((q_ref, k_ref), (q, k), (dq, dk))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_rope_qk_when_only_one_output_reaches_the_loss(interpret):
    q = torch.randn(1, 4, 3, 8, generator=_gen(9), requires_grad=True)
    k = torch.randn(1, 2, 3, 8, generator=_gen(10), requires_grad=True)
    cos, sin = rope_frequencies(8, 3)
    _, k_rot = R.rope_qk(q, k, cos, sin)
    k_rot.sum().backward()
    assert torch.count_nonzero(q.grad) == 0
    (expected,) = torch.autograd.grad(apply_rotary(k, cos, sin).sum(), k)
    torch.testing.assert_close(k.grad, expected, atol=1e-6, rtol=1e-5)


def test_matches_transformers_llama(interpret):
    # SmolLM2 runs transformers' LLaMA code: its rotary embedding and apply_rotary_pos_emb.
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    q = torch.randn(2, 6, 7, 16, generator=_gen(11))
    k = torch.randn(2, 2, 7, 16, generator=_gen(12))
    cos, sin = _tables("per_batch", 2, 7, 16)
    q_hf, k_hf = llama.apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
    q_ours, k_ours = R.rope_qk(q, k, cos, sin)
    torch.testing.assert_close(q_ours, q_hf, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(k_ours, k_hf, atol=1e-6, rtol=1e-5)


def test_strided_inputs_are_read_in_place(interpret, monkeypatch):
    # q as a model makes it: (batch, seq, heads, head_dim) transposed to (batch, heads, ...),
    # and tables with a non-unit stride along head_dim. Nothing may be copied first.
    x = torch.randn(2, 5, 3, 8, generator=_gen(13)).transpose(1, 2)
    wide = torch.randn(2, 5, 16, generator=_gen(14))
    cos, sin = wide[..., ::2], wide[..., 1::2]
    assert not (x.is_contiguous() or cos.is_contiguous())
    monkeypatch.setattr(
        torch.Tensor, "contiguous", lambda *a, **k: pytest.fail("an input was copied")
    )
    _check_against_apply_rotary(x, cos, sin)


def test_strided_upstream_gradient(interpret):
    x = torch.randn(2, 3, 4, 8, generator=_gen(15), requires_grad=True)
    cos, sin = rope_frequencies(8, 4)
    y = R.rope(x, cos, sin).transpose(1, 2)  # the gradient arrives transposed
    dy = torch.randn(y.shape, generator=_gen(16))
    (ours,) = torch.autograd.grad(y, x, dy)
    (theirs,) = torch.autograd.grad(apply_rotary(x, cos, sin).transpose(1, 2), x, dy)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Dispatch and validation
# --------------------------------------------------------------------------------------------


_X = torch.zeros(2, 3, 4, 8)
_COS, _SIN = rope_frequencies(8, 4)


@pytest.mark.parametrize(
    "args, error, words",
    [
        (([1.0], _COS, _SIN), TypeError, "x: expected a torch.Tensor"),
        ((_X[0], _COS, _SIN), ValueError, r"x: expected 4 dims \(batch, heads, seq, head_dim\)"),
        ((_X.long(), _COS, _SIN), TypeError, "x: expected dtype .* got torch.int64"),
        ((torch.zeros(2, 3, 4, 7), _COS, _SIN), ValueError, "x: expected an even head_dim"),
        ((_X, "cos", _SIN), TypeError, "cos: expected a torch.Tensor"),
        ((_X, _COS[:3], _SIN), ValueError, r"cos: expected \(max_seq >= 4, 8\)"),
        ((_X, _COS[:, :4], _SIN), ValueError, "cos: expected"),
        ((_X, _COS, torch.zeros(3, 4, 8)), ValueError, r"sin: expected .* got shape \(3, 4, 8\)"),
        ((_X, _COS, _SIN[:, None]), ValueError, "sin: expected"),
        ((_X, _COS, _SIN.double()), TypeError, "sin: expected dtype"),
        ((_X, _COS, torch.zeros(5, 8)), ValueError, "sin: expected the shape of cos"),
    ],
)
def test_rope_rejects_bad_input(args, error, words):
    with pytest.raises(error, match=words):
        R.rope(*args)


@pytest.mark.parametrize(
    "k, error, words",
    [
        (torch.zeros(1, 3, 4, 8), ValueError, r"k: expected shape \(2, kv_heads, 4, 8\)"),
        (torch.zeros(2, 3, 4, 6), ValueError, "k: expected shape"),
        (torch.zeros(2, 1, 4, 8, dtype=torch.float16), TypeError, "k: expected the dtype of q"),
        ("k", TypeError, "k: expected a torch.Tensor"),
    ],
)
def test_rope_qk_rejects_bad_input(k, error, words):
    with pytest.raises(error, match=words):
        R.rope_qk(_X, k, _COS, _SIN)


def test_cos_and_sin_are_constants():
    with pytest.raises(ValueError, match="cos: the fused kernel treats cos and sin as constants"):
        R.rope(_X, _COS.clone().requires_grad_(), _SIN)
    with torch.no_grad():  # inference: no gradient can be asked for, so it is fine
        R.rope(_X, _COS.clone().requires_grad_(), _SIN)


def test_interpreter_rejects_half_precision(interpret):
    with pytest.raises(TypeError, match="x: the Triton interpreter runs float32 only"):
        R.rope(_X.half(), _COS, _SIN)
    with pytest.raises(TypeError, match="cos: the Triton interpreter runs float32 only"):
        R.rope(_X, _COS.half(), _SIN)


def test_empty_input_passes_through(interpret):
    assert R.rope(torch.zeros(0, 3, 4, 8), _COS, _SIN).shape == (0, 3, 4, 8)
    q, k = R.rope_qk(_X, torch.zeros(2, 0, 4, 8), _COS, _SIN)
    assert q.shape == _X.shape and k.shape == (2, 0, 4, 8)


# --------------------------------------------------------------------------------------------
# Benchmark entry
# --------------------------------------------------------------------------------------------


def test_benchmark_bytes_and_cpu_run():
    b = bench.registry()["rope"]
    case = next(c for c in b.cases("full") if c.panel == "bfloat16, forward" and c.x == 4096)
    p = case.params
    assert p["batch"] * p["seq"] == 16384
    # q (32 heads) and k (8 heads) in and out, cos and sin read once: 2 bytes each
    assert b.work(case) == (2 * 40 + 2) * 16384 * 128 * 2
    machine = bench.Machine("test cpu", "test-cpu", "cpu", 10.0, 0.5, "float32")
    record = bench.run(b, machine, "cpu", scale="cpu", log=lambda s: None)
    assert record["results"] and all(e["throughput"] > 0 for e in record["results"])
    assert set(b.setup(b.cases("cpu")[0], "cpu")) == {"triton", "eager", "compile"}


# --------------------------------------------------------------------------------------------
# The GPU path
# --------------------------------------------------------------------------------------------


def test_warp_pruning_keeps_a_config():
    triton = pytest.importorskip("triton")
    configs = R._warps_configs(triton)
    for heads in (1, 4, 16, 32, 64, 256):
        for half in (1, 32, 64):
            kept = R._prune_warps(configs, {}, BLOCK_D=half, BLOCK_HQ=heads)
            assert kept and all(c.num_warps in (1, 2, 4, 8) for c in kept)


def test_kernel_compiles_for_hopper():
    """Compile the kernel for sm_90a with Triton's bundled ptxas (no GPU needed), in every
    dtype, both directions, with and without k, at every warp count the pruning keeps for
    LLaMA-3-8B and SmolLM2-135M heads: it builds and does not spill registers."""
    triton = pytest.importorskip("triton")
    t32 = torch.empty(1)
    args32 = (t32,) * 6 + (1024, 128, 128, 1) * 2 + (128, 128, 1) * 2 + (4096, 4, 4)
    meta = {"HALF": 8, "BLOCK_D": 8, "BLOCK_HQ": 4, "BLOCK_HK": 4, "HAS_K": True}
    try:
        bench.compile_offline(R._kernel, args32, num_warps=1, BACKWARD=False, **meta)
    except (ImportError, FileNotFoundError, RuntimeError) as err:  # no NVIDIA toolchain here
        pytest.skip(f"cannot compile for sm_90 here: {err}")
    configs = R._warps_configs(triton)
    for q_heads, kv_heads, head_dim in ((32, 8, 128), (9, 3, 64)):
        blocks = {
            "HALF": head_dim // 2,
            "BLOCK_D": head_dim // 2,
            "BLOCK_HQ": next_power_of_2(q_heads),
            "BLOCK_HK": next_power_of_2(kv_heads),
        }
        seq = 4096
        q_strides = (q_heads * seq * head_dim, seq * head_dim, head_dim, 1)
        k_strides = (kv_heads * seq * head_dim, seq * head_dim, head_dim, 1)
        table = (seq * head_dim, head_dim, 1)
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            t = torch.empty(1, dtype=dtype)
            args = (t,) * 6 + q_strides + k_strides + table * 2 + (seq, q_heads, kv_heads)
            for config in R._prune_warps(configs, {}, **blocks):
                for has_k in (False, True):
                    for backward in (False, True):
                        report = bench.compile_offline(
                            R._kernel,
                            args,
                            num_warps=config.num_warps,
                            HAS_K=has_k,
                            BACKWARD=backward,
                            **blocks,
                        )
                        assert report["stack_bytes"] in (0, None), (dtype, config, report)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(2, 32, 8, 1000, 128), (3, 9, 3, 257, 64), (1, 4, 4, 33, 6)])
def test_gpu_matches_reference(dtype, shape):
    # (batch, q heads, kv heads, seq, head_dim): LLaMA-3-8B, SmolLM2-135M, and odd sizes.
    batch, q_heads, kv_heads, seq, head_dim = shape
    q = torch.randn(batch, q_heads, seq, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(batch, kv_heads, seq, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    positions = torch.arange(seq, device="cuda").expand(batch, seq)
    cos, sin = RotaryEmbedding(head_dim).to("cuda")(positions, dtype=dtype)
    q_rot, k_rot = R.rope_qk(q, k, cos, sin)
    # The truth: the same rotation in float32 from the same (rounded) inputs.
    q32, k32, c32, s32 = (t.detach().float() for t in (q, k, cos, sin))
    atol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(q_rot.float(), R.reference(q32, c32, s32), atol=atol, rtol=1e-2)
    torch.testing.assert_close(k_rot.float(), R.reference(k32, c32, s32), atol=atol, rtol=1e-2)
    dq, dk = torch.randn_like(q_rot), torch.randn_like(k_rot)
    gq, gk = torch.autograd.grad((q_rot, k_rot), (q, k), (dq, dk))
    torch.testing.assert_close(
        gq.float(), R.reference_backward(dq.float(), c32, s32), atol=atol, rtol=1e-2
    )
    torch.testing.assert_close(
        gk.float(), R.reference_backward(dk.float(), c32, s32), atol=atol, rtol=1e-2
    )
    torch.testing.assert_close(R.rope(q, cos, sin), q_rot)


@pytest.mark.gpu
@requires_cuda
def test_gpu_strided_inputs_and_tables():
    x = torch.randn(2, 100, 8, 64, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    cos, sin = rope_frequencies(64, 200, device="cuda")  # a longer float32 table
    expected = R.reference(x.float(), cos, sin)
    torch.testing.assert_close(R.rope(x, cos, sin).float(), expected, atol=1.6e-2, rtol=1e-2)
