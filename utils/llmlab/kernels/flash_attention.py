"""FlashAttention-2 in Triton: exact attention without ever storing the attention matrix.

    >>> from llmlab.kernels.flash_attention import flash_attention, reference, tiled_reference
    >>> o = flash_attention(q, k, v, causal=True)       # q, k, v: (batch, heads, seq, head_dim)
    >>> torch.testing.assert_close(o, reference(q, k, v, causal=True))

Plain attention, ``softmax(Q K^T * scale + mask) V``, writes the ``(seq_q, seq_k)`` score
matrix to memory, reads it back for the softmax, writes the probabilities, reads them again
for the product with V: O(seq^2) memory and traffic per head, which dominates at long
sequences. FlashAttention (Dao et al. 2022; FlashAttention-2, Dao 2023) never materialises it:

- **forward**: each program owns a block of ``BLOCK_M`` queries, keeps them in on-chip
  memory, and streams the keys and values past them ``BLOCK_N`` at a time. An *online
  softmax* (running max ``m`` and running sum ``l`` per query, rescaling what was accumulated
  whenever the max grows) makes one pass enough. Only ``O`` and one number per query, the
  log-sum-exp ``lse = m + log(l)``, are written.
- **backward**: recomputes each block of probabilities from ``q, k`` and ``lse`` instead of
  reading a stored matrix (recomputing is cheaper than the memory traffic it saves). A
  pre-pass computes ``delta = rowsum(dO * O)`` (it equals ``rowsum(P * dP)``, the term the
  softmax gradient needs). Then one kernel accumulates ``dK, dV`` for a block of keys over
  all query blocks, and a second kernel accumulates ``dQ`` for a block of queries over all
  key blocks. Two kernels instead of one with atomic adds into ``dQ``: they redo two of the
  seven block matmuls, but need no float32 scratch buffer, no atomics fighting over ``dQ``,
  and give the same bits on every run (deterministic gradients).

Shapes: ``q (batch, heads, seq_q, head_dim)``, ``k, v (batch, heads, seq_k, head_dim)``;
``head_dim`` in 16, 32, 64, 128; any sequence lengths (blocks at the edges are masked);
``causal=True`` needs ``seq_q == seq_k``. Dtypes: float16, bfloat16, float32 on the GPU (the
matmuls accumulate in float32; float32 inputs use exact IEEE products, not TF32); float32 in
the interpreter.

:func:`tiled_reference` is the same algorithm in plain PyTorch, loops and all, for reading.
"""

from __future__ import annotations

import math

import torch

from llmlab import kernels
from llmlab.kernels._common import (
    cdiv,
    dispatch,
    require_dtype,
    require_tensor,
    tl,
    unit_last_stride,
)
from llmlab.kernels.launch import TritonKernel
from llmlab.validate import require_positive_int

kernels.register("flash_attention", "FlashAttention-2 forward and backward, causal or not")

HEAD_DIMS = (16, 32, 64, 128)
#: Block sizes used by the interpreter (the GPU autotunes them). Tests change them.
INTERPRETER_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 16}
_LOG2E = 1.4426950408889634  # exp(x) = exp2(x * log2(e)); exp2 is the GPU's native exponent


# --------------------------------------------------------------------------------------------
# References: the definition of correct, and the same algorithm tiled in PyTorch
# --------------------------------------------------------------------------------------------


def _default_scale(head_dim: int, scale: float | None) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention as written in the paper, materialising the ``(seq_q, seq_k)`` matrix.

    ``softmax(q k^T * scale + mask) v`` in float32, cast back to ``q.dtype``. ``q: (batch,
    heads, seq_q, head_dim)``, ``k, v: (batch, heads, seq_k, head_dim)``; ``scale`` defaults to
    ``1/sqrt(head_dim)``. The causal mask lets query ``i`` see keys ``j <= i``.
    """
    scale = _default_scale(q.shape[-1], scale)
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale  # (batch, heads, seq_q, seq_k)
    if causal:
        seq_q, seq_k = scores.shape[-2:]
        visible = torch.ones(seq_q, seq_k, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~visible, float("-inf"))
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


def tiled_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    block_size: int = 64,
    scale: float | None = None,
) -> torch.Tensor:
    """The FlashAttention forward in plain PyTorch: same result as :func:`reference`.

    Queries are processed ``block_size`` at a time (one Triton program each); for each query
    block the keys and values stream past ``block_size`` at a time, and an online softmax keeps
    per query a running max ``m``, a running sum ``l`` of ``exp(score - m)``, and an unnormalised
    output ``acc``. When a new block raises the max, what was accumulated is rescaled by
    ``exp(m_old - m_new)``. Memory per step is one ``(block, block)`` score tile, never
    ``(seq_q, seq_k)``. Causal attention skips key blocks entirely right of the diagonal.
    """
    require_positive_int(block_size, "block_size")
    scale = _default_scale(q.shape[-1], scale)
    seq_q, seq_k = q.shape[-2], k.shape[-2]
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    for q_start in range(0, seq_q, block_size):
        q_blk = q[..., q_start : q_start + block_size, :].float()
        rows = torch.arange(q_start, q_start + q_blk.shape[-2], device=q.device)
        m_i = torch.full(q_blk.shape[:-1], float("-inf"), device=q.device)  # running max
        l_i = torch.zeros(q_blk.shape[:-1], device=q.device)  # running sum of exp(s - m_i)
        acc = torch.zeros_like(q_blk)  # running sum of exp(s - m_i) * v
        k_stop = min(seq_k, q_start + q_blk.shape[-2]) if causal else seq_k
        for k_start in range(0, k_stop, block_size):
            k_blk = k[..., k_start : k_start + block_size, :].float()
            v_blk = v[..., k_start : k_start + block_size, :].float()
            s = (q_blk @ k_blk.transpose(-2, -1)) * scale  # (batch, heads, bq, bk)
            if causal:
                cols = torch.arange(k_start, k_start + k_blk.shape[-2], device=q.device)
                s = s.masked_fill(cols[None, :] > rows[:, None], float("-inf"))
            m_new = torch.maximum(m_i, s.amax(dim=-1))
            p = torch.exp(s - m_new[..., None])
            alpha = torch.exp(m_i - m_new)  # rescales the old sums to the new max (0 at start)
            l_i = l_i * alpha + p.sum(dim=-1)
            acc = acc * alpha[..., None] + p @ v_blk
            m_i = m_new
        out[..., q_start : q_start + q_blk.shape[-2], :] = acc / l_i[..., None]
    return out.to(q.dtype)


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------
# Conventions shared by the kernels:
# - One program per (block of rows, batch * head). Axis 0 walks the blocks of one head, so
#   programs running side by side share that head's K and V in L2.
# - Scores live in base 2: qk_scale = scale * log2(e), p = exp2(qk * qk_scale - m). exp2 is
#   the hardware instruction; exp would add a multiply per element.
# - The forward saves lse in the same base-2 units: lse = m + log2(l). The backward rebuilds
#   a block of probabilities with a single exp2(qk * qk_scale - lse), no running max needed.
# - Loads at the end of a sequence are masked only when the length is not a multiple of the
#   block (EVEN_M / EVEN_N, derived by heuristics): typical power-of-two lengths pay nothing.
# - Causal attention splits the key loop in two stages: blocks entirely left of the diagonal
#   need no mask at all, and the few on the diagonal do; blocks to the right are skipped,
#   which halves the work.
# - Matmuls accumulate in float32; P and dS are cast to the input dtype before their matmul,
#   as in FlashAttention, so the tensor cores run at 16-bit speed.


def _attn_fwd_kernel(
    Q, K, V, Out, LSE,
    qk_scale,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_os,
    n_heads, seq_q, seq_k,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    if CAUSAL:
        # Later query blocks see more keys; start them first so the last wave of programs is
        # made of short ones and the GPU does not idle waiting for one long straggler.
        pid_m = tl.num_programs(0) - 1 - pid_m
    pid_bh = tl.program_id(1)
    batch = (pid_bh // n_heads).to(tl.int64)  # int64: offsets of big tensors pass 2**31
    head = (pid_bh % n_heads).to(tl.int64)
    Q += batch * stride_qb + head * stride_qh
    K += batch * stride_kb + head * stride_kh
    V += batch * stride_vb + head * stride_vh
    Out += batch * stride_ob + head * stride_oh
    LSE += pid_bh.to(tl.int64) * seq_q

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)

    # The query block is loaded once and stays on chip for the whole key loop.
    q_ptrs = Q + offs_m[:, None] * stride_qs + offs_d[None, :]
    if EVEN_M:
        q = tl.load(q_ptrs)
    else:
        q = tl.load(q_ptrs, mask=offs_m[:, None] < seq_q, other=0.0)

    m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)  # running max (base-2 units)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)  # running sum of exp2(s - m_i) * v

    for stage in tl.static_range(2 if CAUSAL else 1):
        if stage == 0:
            # Keys every query of the block may see: all of them, or (causal) the whole key
            # blocks left of the block's first query.
            lo, hi = 0, ((start_m // BLOCK_N) * BLOCK_N if CAUSAL else seq_k)
        else:
            # Causal only: the key blocks facing the diagonal, where query i sees keys j <= i.
            lo, hi = (start_m // BLOCK_N) * BLOCK_N, tl.minimum(start_m + BLOCK_M, seq_k)
        for start_n in range(lo, hi, BLOCK_N):
            cols = start_n + offs_n
            k_ptrs = K + cols[:, None] * stride_ks + offs_d[None, :]
            v_ptrs = V + cols[:, None] * stride_vs + offs_d[None, :]
            if EVEN_N:
                k = tl.load(k_ptrs)
            else:
                k = tl.load(k_ptrs, mask=cols[:, None] < seq_k, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
            if not EVEN_N:
                s = tl.where(cols[None, :] < seq_k, s, -float("inf"))
            if stage == 1:
                s = tl.where(offs_m[:, None] >= cols[None, :], s, -float("inf"))
            # Online softmax: raise the running max, rescale what was summed so far.
            m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
            p = tl.exp2(s * qk_scale - m_new[:, None])  # one FMA + exp2 per score
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None]
            if EVEN_N:
                v = tl.load(v_ptrs)
            else:
                v = tl.load(v_ptrs, mask=cols[:, None] < seq_k, other=0.0)
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
            m_i = m_new

    # Normalise once at the end instead of once per block.
    acc = acc / l_i[:, None]
    lse = m_i + tl.log2(l_i)
    o_ptrs = Out + offs_m[:, None] * stride_os + offs_d[None, :]
    if EVEN_M:
        tl.store(LSE + offs_m, lse)
        tl.store(o_ptrs, acc.to(Out.dtype.element_ty))
    else:
        tl.store(LSE + offs_m, lse, mask=offs_m < seq_q)
        tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=offs_m[:, None] < seq_q)


def _attn_bwd_delta_kernel(
    Out, DO, DELTA,
    stride_ob, stride_oh, stride_os,
    stride_dob, stride_doh, stride_dos,
    n_heads, seq_q,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    # delta_i = sum_d dO_id * O_id = sum_j P_ij dP_ij: computing it once here saves every
    # backward program from recomputing a row reduction over all keys.
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = (pid_bh // n_heads).to(tl.int64)
    head = (pid_bh % n_heads).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    mask = offs_m[:, None] < seq_q
    o = tl.load(
        Out + batch * stride_ob + head * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :],
        mask=mask, other=0.0,
    )  # fmt: skip
    do = tl.load(
        DO + batch * stride_dob + head * stride_doh + offs_m[:, None] * stride_dos + offs_d[None, :],
        mask=mask, other=0.0,
    )  # fmt: skip
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + pid_bh.to(tl.int64) * seq_q + offs_m, delta, mask=offs_m < seq_q)


def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA,
    sm_scale, qk_scale,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_dob, stride_doh, stride_dos,
    stride_dkb, stride_dkh, stride_dks,
    stride_dvb, stride_dvh, stride_dvs,
    n_heads, seq_q, seq_k,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
):  # fmt: skip
    # One program per block of BLOCK_N keys: its K, V stay on chip and dK, dV accumulate in
    # registers while the query blocks stream past; each is written exactly once.
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = (pid_bh // n_heads).to(tl.int64)
    head = (pid_bh % n_heads).to(tl.int64)
    Q += batch * stride_qb + head * stride_qh
    K += batch * stride_kb + head * stride_kh
    V += batch * stride_vb + head * stride_vh
    DO += batch * stride_dob + head * stride_doh
    DK += batch * stride_dkb + head * stride_dkh
    DV += batch * stride_dvb + head * stride_dvh
    LSE += pid_bh.to(tl.int64) * seq_q
    DELTA += pid_bh.to(tl.int64) * seq_q

    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    k_ptrs = K + offs_n[:, None] * stride_ks + offs_d[None, :]
    v_ptrs = V + offs_n[:, None] * stride_vs + offs_d[None, :]
    if EVEN_N:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    else:
        k = tl.load(k_ptrs, mask=offs_n[:, None] < seq_k, other=0.0)
        v = tl.load(v_ptrs, mask=offs_n[:, None] < seq_k, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)

    if CAUSAL:
        # Query blocks must start on multiples of BLOCK_M for EVEN_M to hold here too.
        tl.static_assert(BLOCK_N % BLOCK_M == 0, "causal dK/dV needs BLOCK_N % BLOCK_M == 0")
    for stage in tl.static_range(2 if CAUSAL else 1):
        if CAUSAL:
            # Queries before start_n see none of these keys: skip them. Stage 0: the query
            # blocks facing the diagonal (masked); stage 1: every query below it (unmasked).
            if stage == 0:
                lo, hi = start_n, tl.minimum(start_n + BLOCK_N, seq_q)
            else:
                lo, hi = start_n + BLOCK_N, seq_q
        else:
            lo, hi = 0, seq_q
        for start_m in range(lo, hi, BLOCK_M):
            rows = start_m + offs_m
            q_ptrs = Q + rows[:, None] * stride_qs + offs_d[None, :]
            do_ptrs = DO + rows[:, None] * stride_dos + offs_d[None, :]
            if EVEN_M:
                q = tl.load(q_ptrs)
                do = tl.load(do_ptrs)
                lse = tl.load(LSE + rows)
                delta = tl.load(DELTA + rows)
            else:
                # Rows past the end get lse = +inf, so their probabilities are exp2(-inf) = 0
                # and they add nothing to dK or dV.
                q = tl.load(q_ptrs, mask=rows[:, None] < seq_q, other=0.0)
                do = tl.load(do_ptrs, mask=rows[:, None] < seq_q, other=0.0)
                lse = tl.load(LSE + rows, mask=rows < seq_q, other=float("inf"))
                delta = tl.load(DELTA + rows, mask=rows < seq_q, other=0.0)
            # Work with transposed tiles (keys down, queries across): then dV += P^T dO and
            # dK += dS^T Q are plain matmuls with no transpose of P or dS in registers.
            s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION)  # (BLOCK_N, BLOCK_M)
            p_t = tl.exp2(s_t * qk_scale - lse[None, :])
            if CAUSAL and stage == 0:
                p_t = tl.where(rows[None, :] >= offs_n[:, None], p_t, 0.0)
            dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PRECISION)
            dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (dO V^T)^T
            ds_t = p_t * (dp_t - delta[None, :])  # softmax backward, per score
            dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PRECISION)

    dk = dk * sm_scale  # scores were q.k * scale, so dK = scale * dS^T Q
    dk_ptrs = DK + offs_n[:, None] * stride_dks + offs_d[None, :]
    dv_ptrs = DV + offs_n[:, None] * stride_dvs + offs_d[None, :]
    if EVEN_N:
        tl.store(dk_ptrs, dk.to(DK.dtype.element_ty))
        tl.store(dv_ptrs, dv.to(DV.dtype.element_ty))
    else:
        tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=offs_n[:, None] < seq_k)
        tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=offs_n[:, None] < seq_k)


def _attn_bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA,
    sm_scale, qk_scale,
    stride_qb, stride_qh, stride_qs,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_dob, stride_doh, stride_dos,
    stride_dqb, stride_dqh, stride_dqs,
    n_heads, seq_q, seq_k,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
):  # fmt: skip
    # One program per block of BLOCK_M queries: mirror image of the forward. Q, dO, lse and
    # delta stay on chip; keys stream past; dQ accumulates in registers and is written once.
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = tl.num_programs(0) - 1 - pid_m  # longest rows first, as in the forward
    pid_bh = tl.program_id(1)
    batch = (pid_bh // n_heads).to(tl.int64)
    head = (pid_bh % n_heads).to(tl.int64)
    Q += batch * stride_qb + head * stride_qh
    K += batch * stride_kb + head * stride_kh
    V += batch * stride_vb + head * stride_vh
    DO += batch * stride_dob + head * stride_doh
    DQ += batch * stride_dqb + head * stride_dqh
    LSE += pid_bh.to(tl.int64) * seq_q
    DELTA += pid_bh.to(tl.int64) * seq_q

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + offs_m[:, None] * stride_qs + offs_d[None, :]
    do_ptrs = DO + offs_m[:, None] * stride_dos + offs_d[None, :]
    if EVEN_M:
        q = tl.load(q_ptrs)
        do = tl.load(do_ptrs)
        lse = tl.load(LSE + offs_m)
        delta = tl.load(DELTA + offs_m)
    else:
        q = tl.load(q_ptrs, mask=offs_m[:, None] < seq_q, other=0.0)
        do = tl.load(do_ptrs, mask=offs_m[:, None] < seq_q, other=0.0)
        lse = tl.load(LSE + offs_m, mask=offs_m < seq_q, other=float("inf"))
        delta = tl.load(DELTA + offs_m, mask=offs_m < seq_q, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    for stage in tl.static_range(2 if CAUSAL else 1):
        if stage == 0:  # the same two stages as the forward
            lo, hi = 0, ((start_m // BLOCK_N) * BLOCK_N if CAUSAL else seq_k)
        else:
            lo, hi = (start_m // BLOCK_N) * BLOCK_N, tl.minimum(start_m + BLOCK_M, seq_k)
        for start_n in range(lo, hi, BLOCK_N):
            cols = start_n + offs_n
            k_ptrs = K + cols[:, None] * stride_ks + offs_d[None, :]
            v_ptrs = V + cols[:, None] * stride_vs + offs_d[None, :]
            if EVEN_N:
                k = tl.load(k_ptrs)
                v = tl.load(v_ptrs)
            else:
                k = tl.load(k_ptrs, mask=cols[:, None] < seq_k, other=0.0)
                v = tl.load(v_ptrs, mask=cols[:, None] < seq_k, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
            p = tl.exp2(s * qk_scale - lse[:, None])
            if not EVEN_N:
                p = tl.where(cols[None, :] < seq_k, p, 0.0)
            if stage == 1:
                p = tl.where(offs_m[:, None] >= cols[None, :], p, 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)

    dq = dq * sm_scale
    dq_ptrs = DQ + offs_m[:, None] * stride_dqs + offs_d[None, :]
    if EVEN_M:
        tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty))
    else:
        tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=offs_m[:, None] < seq_q)


# --------------------------------------------------------------------------------------------
# Block sizes: autotuned on the GPU
# --------------------------------------------------------------------------------------------
# Hopper (H100) runs 16-bit matmuls on warp-group MMA (4 warps issue one 64-row product), so
# BLOCK_M of 64 or 128 with 4 or 8 warps maps well; num_stages > 1 lets Triton prefetch the
# next K/V tiles into shared memory while the current ones are multiplied. Which combination
# wins depends on head_dim, causality, the sequence length and the GPU, so it is measured,
# once per shape (the first call of a new shape takes some seconds).
#
# The candidates are pruned before anything is compiled, with two budgets checked against
# ptxas for sm_90: tiles must fit in shared memory (227 KiB per block on H100), and the
# float32 accumulators and score tiles must stay within ~160 values per thread, beyond which
# the compiler spills registers to local memory and the kernel crawls.

_SMEM_BYTES = 227 * 1024 - 1024  # H100's per-block shared memory, less a little for barriers
_VALUES_PER_THREAD = 160


def _configs(block_m, block_n, warps, stages_for_n):
    def factory(triton):
        return [
            triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bm in block_m
            for bn in block_n
            for w in warps
            for s in stages_for_n[bn]
        ]

    return factory


def _pruner(smem_elems, fp32_values, causal_ok):
    """Keep configs whose ``smem_elems(bm, bn, d, stages)`` tiles fit in shared memory, whose
    ``fp32_values(bm, bn, d)`` accumulators fit in registers, and (causal) ``causal_ok(bm, bn)``.
    """

    def prune(configs, named_args, **kwargs):
        d = kwargs["HEAD_DIM"]
        elem = named_args["Q"].element_size()
        kept = []
        for c in configs:
            bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
            if smem_elems(bm, bn, d, c.num_stages) * elem > _SMEM_BYTES:
                continue
            if fp32_values(bm, bn, d) > _VALUES_PER_THREAD * 32 * c.num_warps:
                continue
            if kwargs.get("CAUSAL") and not causal_ok(bm, bn):
                continue
            kept.append(c)
        # Nothing fits (float32 at head_dim 128): the smallest tiles will still run.
        smallest = min(
            configs, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], c.num_stages)
        )
        return kept or [smallest]

    return prune


# Forward: Q (BLOCK_M x d) stays in shared memory, K and V tiles (BLOCK_N x d) are prefetched
# `stages` deep; registers hold the output accumulator and one score tile.
_fwd_configs = _configs((64, 128), (64, 128), (4, 8), {64: (3, 4), 128: (2, 3)})
_prune_fwd = _pruner(
    smem_elems=lambda bm, bn, d, st: bm * d + st * 2 * bn * d,
    fp32_values=lambda bm, bn, d: bm * d + bm * bn,
    causal_ok=lambda bm, bn: True,
)
# dK/dV: K and V (BLOCK_N x d) stay resident with two accumulators; Q and dO tiles stream.
_bwd_dkdv_configs = _configs((32, 64), (64, 128), (4, 8), {64: (2, 3), 128: (2, 3)})
_prune_dkdv = _pruner(
    smem_elems=lambda bm, bn, d, st: 2 * bn * d + st * 2 * bm * d,
    fp32_values=lambda bm, bn, d: 2 * bn * d + 2 * bn * bm,
    causal_ok=lambda bm, bn: bn % bm == 0,  # see the kernel's static_assert
)
# dQ: Q and dO stay resident with one accumulator; K and V tiles stream; two score tiles.
_bwd_dq_configs = _configs((64, 128), (32, 64), (4, 8), {32: (2, 3), 64: (2, 3)})
_prune_dq = _pruner(
    smem_elems=lambda bm, bn, d, st: 2 * bm * d + st * 2 * bn * d,
    fp32_values=lambda bm, bn, d: bm * d + 2 * bm * bn,
    causal_ok=lambda bm, bn: True,
)


_EVEN = {
    "EVEN_M": lambda args: args["seq_q"] % args["BLOCK_M"] == 0,
    "EVEN_N": lambda args: args["seq_k"] % args["BLOCK_N"] == 0,
}
_KEY = ["seq_q", "seq_k", "HEAD_DIM", "CAUSAL"]

_fwd = TritonKernel(
    _attn_fwd_kernel,
    autotune=(_fwd_configs, _KEY, _prune_fwd),
    heuristics=_EVEN,
    interpret_meta=INTERPRETER_BLOCKS,
)
_bwd_delta = TritonKernel(_attn_bwd_delta_kernel)
_bwd_dkdv = TritonKernel(
    _attn_bwd_dkdv_kernel, autotune=(_bwd_dkdv_configs, _KEY, _prune_dkdv), heuristics=_EVEN
)
_bwd_dq = TritonKernel(
    _attn_bwd_dq_kernel,
    autotune=(_bwd_dq_configs, _KEY, _prune_dq),
    heuristics=_EVEN,
    interpret_meta=INTERPRETER_BLOCKS,
)


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(batch, heads, seq) strides of a (batch, heads, seq, head_dim) tensor with unit last stride."""
    return t.stride(0), t.stride(1), t.stride(2)


def _forward(q, k, v, causal: bool, scale: float, interpret: bool):
    batch, heads, seq_q, head_dim = q.shape
    seq_k = k.shape[2]
    o = torch.empty_like(q)
    lse = torch.empty((batch, heads, seq_q), dtype=torch.float32, device=q.device)

    def grid(meta):
        return (cdiv(seq_q, meta["BLOCK_M"]), batch * heads)

    _fwd.launch(
        grid, q, k, v, o, lse,
        scale * _LOG2E,
        *_strides(q), *_strides(k), *_strides(v), *_strides(o),
        heads, seq_q, seq_k,
        interpret=interpret,
        HEAD_DIM=head_dim, CAUSAL=causal, PRECISION=_precision(q.dtype),
    )  # fmt: skip
    return o, lse


def _backward(q, k, v, o, lse, do, causal: bool, scale: float, interpret: bool):
    batch, heads, seq_q, head_dim = q.shape
    seq_k = k.shape[2]
    do = unit_last_stride(do)
    delta = torch.empty_like(lse)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    precision = _precision(q.dtype)
    # A light, memory-bound pass: a fixed block of 64 rows over 8 warps (no tuning needed).
    block = INTERPRETER_BLOCKS["BLOCK_M"] if interpret else 64
    _bwd_delta.launch(
        (cdiv(seq_q, block), batch * heads), o, do, delta,
        *_strides(o), *_strides(do),
        heads, seq_q,
        interpret=interpret,
        HEAD_DIM=head_dim, BLOCK_M=block, num_warps=8,
    )  # fmt: skip

    def grid_dkdv(meta):
        return (cdiv(seq_k, meta["BLOCK_N"]), batch * heads)

    # The interpreter's blocks, ordered so that BLOCK_N % BLOCK_M == 0 (see the kernel).
    small, large = sorted(INTERPRETER_BLOCKS.values())
    dkdv_meta = {"BLOCK_M": small, "BLOCK_N": large} if interpret else {}
    _bwd_dkdv.launch(
        grid_dkdv, q, k, v, do, dk, dv, lse, delta,
        scale, scale * _LOG2E,
        *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dk), *_strides(dv),
        heads, seq_q, seq_k,
        interpret=interpret,
        HEAD_DIM=head_dim, CAUSAL=causal, PRECISION=precision, **dkdv_meta,
    )  # fmt: skip

    def grid_dq(meta):
        return (cdiv(seq_q, meta["BLOCK_M"]), batch * heads)

    _bwd_dq.launch(
        grid_dq, q, k, v, do, dq, lse, delta,
        scale, scale * _LOG2E,
        *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dq),
        heads, seq_q, seq_k,
        interpret=interpret,
        HEAD_DIM=head_dim, CAUSAL=causal, PRECISION=precision,
    )  # fmt: skip
    return dq, dk, dv


def _precision(dtype: torch.dtype) -> str:
    # float32 inputs get exact IEEE products (the reference's numbers); TF32 would be faster
    # but round the inputs to 10 mantissa bits. 16-bit inputs ignore the setting.
    return "ieee" if dtype == torch.float32 else "tf32"


# --------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------


class FlashAttentionFunction(torch.autograd.Function):
    """Triton forward and backward; saves q, k, v, o and the per-row log-sum-exp (not P)."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, scale: float, interpret: bool):
        q, k, v = (unit_last_stride(t) for t in (q, k, v))
        o, lse = _forward(q, k, v, causal, scale, interpret)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.scale, ctx.interpret = causal, scale, interpret
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, o, lse, do, ctx.causal, ctx.scale, ctx.interpret)
        return dq, dk, dv, None, None, None


# --------------------------------------------------------------------------------------------
# The public op
# --------------------------------------------------------------------------------------------


def _check(q, k, v, causal, scale) -> float:
    for name, t in (("q", q), ("k", k), ("v", v)):
        require_tensor(t, name)
        if t.dim() != 4:
            raise ValueError(
                f"{name}: expected shape (batch, heads, seq, head_dim), got {tuple(t.shape)}"
            )
        require_dtype(t, name)
    batch, heads, seq_q, head_dim = q.shape
    if k.shape[:2] != (batch, heads) or k.shape[3] != head_dim:
        raise ValueError(
            f"k: expected shape ({batch}, {heads}, seq_k, {head_dim}) to match q "
            f"{tuple(q.shape)}, got {tuple(k.shape)}"
        )
    if v.shape != k.shape:
        raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"k, v: expected the dtype of q ({q.dtype}), got {k.dtype} and {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"k, v: expected q's device {q.device}, got {k.device} and {v.device}")
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"head_dim: expected one of {HEAD_DIMS}, got {head_dim}")
    if seq_q < 1 or k.shape[2] < 1:
        raise ValueError(
            f"seq: expected at least one query and one key, got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    if not isinstance(causal, bool):
        raise TypeError(f"causal: expected a bool, got {type(causal).__name__}")
    if causal and seq_q != k.shape[2]:
        raise ValueError(
            f"causal: expected seq_q == seq_k for causal attention, got {seq_q} and {k.shape[2]}"
        )
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"scale: expected a float or None, got {type(scale).__name__}")
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale: expected a positive finite float, got {scale}")
    return _default_scale(head_dim, scale)


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Exact attention ``softmax(q k^T * scale + mask) v`` without the attention matrix.

    ``q: (batch, heads, seq_q, head_dim)``, ``k, v: (batch, heads, seq_k, head_dim)`` with
    ``head_dim`` in 16, 32, 64, 128; returns ``(batch, heads, seq_q, head_dim)`` in q's dtype.
    ``causal=True`` (query i sees keys j <= i) needs ``seq_q == seq_k``. ``scale`` defaults to
    ``1/sqrt(head_dim)``. Differentiable in q, k and v.

    Runs the Triton kernels on CUDA tensors when Triton and a GPU are present, the same kernels
    in Triton's CPU interpreter when ``TRITON_INTERPRET=1`` (float32 only), and
    :func:`reference` otherwise (see :func:`llmlab.kernels.backend`).
    """
    scale = _check(q, k, v, causal, scale)
    path = dispatch((q, "q"))
    if path == "reference":
        return reference(q, k, v, causal=causal, scale=scale)
    return FlashAttentionFunction.apply(q, k, v, causal, scale, path == "interpreter")


__all__ = [
    "HEAD_DIMS",
    "FlashAttentionFunction",
    "flash_attention",
    "reference",
    "tiled_reference",
]
