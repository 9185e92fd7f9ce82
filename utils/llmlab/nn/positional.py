"""Position information for attention: sinusoidal, learned, RoPE, ALiBi and T5's relative buckets.

Attention alone is blind to order (permute the keys and values together and the output does
not change), so every Transformer injects positions somewhere:

- added to the token embeddings: :func:`sinusoidal_encoding` (Vaswani et al. 2017) or a
  :class:`LearnedPositionalEmbedding` table (GPT-2, BERT);
- rotating q and k inside attention: RoPE (Su et al. 2021; LLaMA, SmolLM2), see
  :func:`rope_frequencies`, :func:`apply_rotary`, :class:`RotaryEmbedding`;
- a bias on the attention scores: ALiBi (Press et al. 2022), see :func:`alibi_bias`, or T5's
  learned bias per bucket of relative distance, see :func:`relative_position_bucket` and
  :class:`RelativePositionBias`.

RoPE layouts. RoPE turns pairs of q's and k's dimensions by angle position * theta_i,
theta_i = base^(-2i/head_dim); which dimensions form pair i is a convention, and checkpoints are
saved in one or the other (``layout=`` of :func:`apply_rotary`, :func:`rope_frequencies`,
:class:`RotaryEmbedding`):

- ``"half"`` (the default): pair i is (i, i + head_dim/2), rotated by :func:`rotate_half`.
  GPT-NeoX, Hugging Face's LLaMA and SmolLM2; this one matches ``transformers`` exactly.
- ``"interleaved"``: pair i is the adjacent (2i, 2i+1), rotated by :func:`rotate_interleaved`.
  The RoFormer paper, Meta's original LLaMA (complex multiplication of adjacent pairs) and
  GPT-J (``rotate_every_two``).

The two differ by a fixed permutation of each head's dimensions (:func:`rope_permutation`), and
a permutation applied to q and k alike leaves q.k unchanged. So a checkpoint trained with
interleaved RoPE runs in a rotate-half model once the rows of its q and k projections are
permuted (:func:`interleaved_to_half`, what Hugging Face's LLaMA conversion script does).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.validate import require_dims, require_float, require_positive_int

__all__ = [
    "sinusoidal_encoding",
    "SinusoidalPositionalEmbedding",
    "LearnedPositionalEmbedding",
    "rope_inverse_frequencies",
    "rope_frequencies",
    "rotate_half",
    "rotate_interleaved",
    "apply_rotary",
    "RotaryEmbedding",
    "rope_permutation",
    "interleaved_to_half",
    "half_to_interleaved",
    "alibi_slopes",
    "alibi_bias",
    "relative_position_bucket",
    "RelativePositionBias",
]


# --------------------------------------------------------------------------------------------
# Absolute positions, added to the embeddings
# --------------------------------------------------------------------------------------------


def sinusoidal_encoding(
    seq: int,
    d_model: int,
    base: float = 10000.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The fixed encoding of "Attention Is All You Need", shape (seq, d_model).

    PE[pos, 2i] = sin(pos / base^(2i/d_model)), PE[pos, 2i+1] = cos(pos / base^(2i/d_model)):
    each pair of dimensions is a clock at its own frequency, from one turn per 2*pi positions
    (i = 0) to one per 2*pi*base positions, so PE[pos + k] is a fixed rotation of PE[pos].
    """
    for value, name in ((seq, "seq"), (d_model, "d_model")):
        require_positive_int(value, name)
    if d_model % 2:
        raise ValueError(f"d_model: expected an even number (sin/cos pairs), got {d_model}")
    position = torch.arange(seq, device=device, dtype=torch.float32)[:, None]
    inv_freq = base ** (-torch.arange(0, d_model, 2, device=device, dtype=torch.float32) / d_model)
    angle = position * inv_freq  # (seq, d_model / 2)
    pe = torch.empty(seq, d_model, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe.to(dtype)


class SinusoidalPositionalEmbedding(nn.Module):
    """:func:`sinusoidal_encoding` as a module: positions (...) -> (..., d_model); no parameters.

    The table holds ``max_seq`` positions (a non-persistent buffer, so checkpoints stay small);
    it is the same interface as :class:`LearnedPositionalEmbedding`, so models can swap them.
    """

    def __init__(self, max_seq: int, d_model: int, base: float = 10000.0):
        super().__init__()
        self.max_seq = max_seq
        self.d_model = d_model
        self.register_buffer("table", sinusoidal_encoding(max_seq, d_model, base), persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return _lookup(self.table, positions)


class LearnedPositionalEmbedding(nn.Embedding):
    """One trained vector per position (GPT-2's ``wpe``, BERT's position embeddings).

    positions (...) -> (..., d_model). It cannot represent positions >= ``max_seq``: the reason
    learned tables do not extrapolate to longer inputs.
    """

    def __init__(self, max_seq: int, d_model: int):
        for value, name in ((max_seq, "max_seq"), (d_model, "d_model")):
            require_positive_int(value, name)
        super().__init__(max_seq, d_model)
        self.max_seq = max_seq
        self.d_model = d_model
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return _lookup(self.weight, positions)


# --------------------------------------------------------------------------------------------
# RoPE: rotary position embedding
# --------------------------------------------------------------------------------------------


def rope_inverse_frequencies(
    head_dim: int, base: float = 10000.0, device: torch.device | str | None = None
) -> torch.Tensor:
    """theta_i = base^(-2i/head_dim) for i = 0 .. head_dim/2 - 1, float32 (head_dim / 2,)."""
    require_positive_int(head_dim, "head_dim")
    if head_dim % 2:
        raise ValueError(
            f"head_dim: expected an even number (dimensions rotate in pairs), got {head_dim}"
        )
    return 1.0 / (
        base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    )


def _rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, layout: str = "half"
) -> tuple[torch.Tensor, torch.Tensor]:
    # The same float32 operations as transformers' LlamaRotaryEmbedding, so results are bitwise equal.
    freqs = positions[..., None].float() * inv_freq  # (..., head_dim / 2)
    if layout == "half":  # angle i serves dims i and i + head_dim/2
        emb = torch.cat((freqs, freqs), dim=-1)
    else:  # interleaved: angle i serves dims 2i and 2i + 1 (GPT-J's repeat_interleave)
        emb = freqs.repeat_interleave(2, dim=-1)
    return emb.cos(), emb.sin()


def rope_frequencies(
    head_dim: int,
    max_seq: int,
    base: float = 10000.0,
    device: torch.device | str | None = None,
    layout: str = "half",
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for positions 0 .. max_seq - 1, each (max_seq, head_dim), float32.

    Row m holds cos(m * theta_i) and sin(m * theta_i) at the two dims of pair i: dims i and
    i + head_dim/2 for ``layout="half"``, dims 2i and 2i+1 for ``layout="interleaved"`` (see
    the module docstring). Apply them with :func:`apply_rotary` in the same layout.
    """
    require_positive_int(max_seq, "max_seq")
    _require_layout(layout)
    inv_freq = rope_inverse_frequencies(head_dim, base, device)
    return _rope_cos_sin(torch.arange(max_seq, device=device), inv_freq, layout)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim: a 90-degree turn of each pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotate_interleaved(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): a 90-degree turn of each adjacent pair.

    GPT-J's ``rotate_every_two``. Read pair (x_2i, x_2i+1) as the complex number
    x_2i + i x_2i+1: this is multiplication by i, so ``x * cos + rotate_interleaved(x) * sin``
    is multiplication by e^(i angle), Meta's LLaMA ``x * freqs_cis``.
    """
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


_ROTATIONS = {"half": rotate_half, "interleaved": rotate_interleaved}


def apply_rotary(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor | None = None,
    layout: str = "half",
) -> torch.Tensor:
    """Rotate q or k by their positions: x * cos + rotate(x) * sin.

    x: (batch, heads, seq, head_dim). cos, sin: a table (max_seq, head_dim) from
    :func:`rope_frequencies`, or per-batch values (batch, seq, head_dim) from
    :class:`RotaryEmbedding`. positions: None (x holds positions 0 .. seq-1: the first seq rows
    of a table), or (seq,) / (batch, seq) integer positions to look up in the table (e.g. the
    offset positions of new tokens with a KV cache, or left-padded batches).

    layout: ``"half"`` (rotate = :func:`rotate_half`, HF LLaMA) or ``"interleaved"``
    (rotate = :func:`rotate_interleaved`, RoFormer, Meta's LLaMA, GPT-J). cos and sin must be
    built in the same layout; the values are not checked (a table of a position 0 fits both).

    Afterwards (R_m q) . (R_n k) = q . R_(n-m) k: the score depends on the offset n - m only.
    Computed in x's dtype, as in transformers.
    """
    _require_rotary(x, cos, sin, positions)
    _require_layout(layout)
    if positions is not None:
        cos, sin = _lookup(cos, positions), _lookup(sin, positions)  # ([batch,] seq, head_dim)
    elif cos.dim() == 2:
        cos, sin = cos[: x.shape[2]], sin[: x.shape[2]]
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + _ROTATIONS[layout](x) * sin


class RotaryEmbedding(nn.Module):
    """RoPE as a module: positions (seq,) or (batch, seq) -> (cos, sin), each (..., head_dim).

    Computed on the fly from the inverse frequencies (no length limit, for length-extrapolation
    experiments), exactly as transformers' ``LlamaRotaryEmbedding``. A model computes (cos, sin)
    once per forward and hands them to every attention layer
    (``MultiHeadAttention(..., rope=(cos, sin))``, which rotates in the ``"half"`` layout).
    With ``layout="interleaved"`` the tables are for ``apply_rotary(..., layout="interleaved")``.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, layout: str = "half"):
        super().__init__()
        _require_layout(layout)
        self.head_dim = head_dim
        self.base = base
        self.layout = layout
        self.register_buffer("inv_freq", rope_inverse_frequencies(head_dim, base), persistent=False)

    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = _rope_cos_sin(positions, self.inv_freq, self.layout)
        if dtype is not None:
            cos, sin = cos.to(dtype), sin.to(dtype)
        return cos, sin

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}, layout={self.layout!r}"


def rope_permutation(head_dim: int) -> torch.Tensor:
    """The order of dims that turns the interleaved layout into rotate-half, int64 (head_dim,).

    perm = [0, 2, 4, ..., head_dim-2, 1, 3, ..., head_dim-1]: ``x[..., perm]`` puts the first
    dim of every adjacent pair (2i, 2i+1) in the first half and the second in the second half,
    so interleaved pair i lands on the rotate-half pair (i, i + head_dim/2). With tables of the
    matching layouts::

        apply_rotary(x[..., perm], cos_h, sin_h, layout="half")
            == apply_rotary(x, cos_i, sin_i, layout="interleaved")[..., perm]

    and ``torch.argsort(perm)`` undoes it.
    """
    require_positive_int(head_dim, "head_dim")
    if head_dim % 2:
        raise ValueError(
            f"head_dim: expected an even number (dimensions rotate in pairs), got {head_dim}"
        )
    return torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))


def interleaved_to_half(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """A q or k projection trained with interleaved RoPE, for a model that uses rotate-half.

    weight: (n_heads * head_dim, d_in), a ``q_proj``/``k_proj`` weight in nn.Linear's
    (out, in) layout, or its bias (n_heads * head_dim,). Returns a copy whose rows are permuted
    by :func:`rope_permutation` within each head. The projection then outputs q[..., perm],
    rotate-half RoPE turns it exactly as interleaved RoPE turned q, and since k gets the same
    permutation every score q.k, hence the model's output, is unchanged. Pass ``n_kv_heads``
    for k in grouped-query attention. (Hugging Face's ``convert_llama_weights_to_hf.py`` does
    this to Meta's ``wq`` and ``wk`` in its ``permute``.) v and the output projection stay as
    they are: RoPE never touches v.
    """
    return _permute_head_rows(weight, n_heads, "interleaved_to_half")


def half_to_interleaved(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of :func:`interleaved_to_half`: a rotate-half q/k projection for interleaved RoPE.

    weight: (n_heads * head_dim, d_in) or a bias (n_heads * head_dim,); rows permuted within
    each head by ``argsort(rope_permutation(head_dim))`` (what exporting a Hugging Face LLaMA
    back to Meta's layout does).
    """
    return _permute_head_rows(weight, n_heads, "half_to_interleaved")


# --------------------------------------------------------------------------------------------
# ALiBi: attention with linear biases
# --------------------------------------------------------------------------------------------


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """The per-head slopes m of ALiBi, float32 (n_heads,).

    For n heads (a power of 2) the geometric sequence starting at and with ratio 2^(-8/n):
    for 8 heads 1/2, 1/4, ..., 1/256. Otherwise, as in the paper's code: the slopes of the
    closest smaller power of 2, then every other slope of the next power of 2.
    """
    require_positive_int(n_heads, "n_heads")

    def power_of_2(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_2(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_2(closest) + power_of_2(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(
    n_heads: int,
    seq_q: int,
    seq_k: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Additive ALiBi bias (1, n_heads, seq_q, seq_k): -m_h * |distance between query and key|.

    The queries are the last seq_q of the seq_k positions (as :func:`llmlab.nn.attention.causal_mask`
    aligns them). With a causal mask this is the paper's bias m * [-(i-1), ..., -1, 0]; the
    symmetric |i - j| also serves bidirectional encoders. Pass it as the float ``mask`` of
    attention, combined with the causal mask by ``llmlab.nn.attention.combine_masks``.
    """
    seq_k = seq_q if seq_k is None else seq_k
    for value, name in ((seq_q, "seq_q"), (seq_k, "seq_k")):
        require_positive_int(value, name)
    q_pos = torch.arange(seq_k - seq_q, seq_k, device=device)[:, None]
    k_pos = torch.arange(seq_k, device=device)[None, :]
    distance = (q_pos - k_pos).abs().float()  # (seq_q, seq_k)
    slopes = alibi_slopes(n_heads).to(device)
    return (-slopes[:, None, None] * distance).unsqueeze(0).to(dtype)


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _lookup(table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows ``positions`` of ``table``: (...) -> (..., table's width).

    No range check up front (reading positions' min and max would wait for the GPU); a position
    outside the table raises IndexError on the CPU, reported here with the table's length.
    """
    try:
        return F.embedding(positions, table)
    except IndexError:
        max_seq = table.shape[0]
        raise ValueError(
            f"positions: expected values in [0, {max_seq}) (max_seq={max_seq}), "
            f"got min {int(positions.min())}, max {int(positions.max())}"
        ) from None


def _require_layout(layout) -> None:
    if not isinstance(layout, str) or layout not in _ROTATIONS:
        raise ValueError(
            "layout: expected 'half' (pairs (i, i + head_dim/2): GPT-NeoX, HF LLaMA) or "
            f"'interleaved' (pairs (2i, 2i+1): RoFormer, Meta's LLaMA, GPT-J), got {layout!r}"
        )


def _permute_head_rows(weight, n_heads, direction: str) -> torch.Tensor:
    """Permute the rows of each head's block of a q/k projection weight (or bias)."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight: expected a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() not in (1, 2):
        raise ValueError(
            "weight: expected a projection weight (n_heads * head_dim, d_in) or bias "
            f"(n_heads * head_dim,), got shape {tuple(weight.shape)}"
        )
    require_positive_int(n_heads, "n_heads")
    rows = weight.shape[0]
    if rows % n_heads or (rows // n_heads) % 2:
        raise ValueError(
            f"weight: expected n_heads={n_heads} heads of an even head_dim "
            f"(rows divisible by {2 * n_heads}), got {rows} rows"
        )
    head_dim = rows // n_heads
    perm = rope_permutation(head_dim).to(weight.device)
    if direction == "half_to_interleaved":
        perm = torch.argsort(perm)
    per_head = weight.reshape(n_heads, head_dim, *weight.shape[1:])
    return per_head[:, perm].reshape(weight.shape)


def _require_rotary(x, cos, sin, positions) -> None:
    """The inputs of :func:`apply_rotary`, checked once at that entry point."""
    require_dims(x, 4, "x", "(batch, heads, seq, head_dim)")
    require_float(x, "x")
    batch, _, seq, head_dim = x.shape
    if positions is not None and (positions.dim() not in (1, 2) or positions.shape[-1] != seq):
        raise ValueError(
            f"positions: expected ({seq},) or (batch, {seq}), got shape {tuple(positions.shape)}"
        )
    shape = tuple(cos.shape) if isinstance(cos, torch.Tensor) else ()
    if positions is not None:  # a table, looked up at positions
        want, ok = f"(max_seq, {head_dim})", len(shape) == 2 and shape[1] == head_dim
    else:  # the first seq rows of a table, or per-batch values
        want = f"(max_seq >= {seq}, {head_dim}) or ({batch}, {seq}, {head_dim})"
        ok = (len(shape) == 2 and shape[0] >= seq and shape[1] == head_dim) or (
            len(shape) == 3 and shape[0] in (1, batch) and shape[1:] == (seq, head_dim)
        )
    if not ok:
        got = shape if isinstance(cos, torch.Tensor) else type(cos).__name__
        raise ValueError(f"cos: expected {want}, got {got}")
    if not isinstance(sin, torch.Tensor) or sin.shape != cos.shape:
        got = tuple(sin.shape) if isinstance(sin, torch.Tensor) else type(sin).__name__
        raise ValueError(f"sin: expected the shape of cos {shape}, got {got}")


# --------------------------------------------------------------------------------------------
# Relative position buckets (T5)


def relative_position_bucket(
    relative_position: torch.Tensor,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> torch.Tensor:
    """Bucket index in [0, num_buckets) for each distance ``key_pos - query_pos`` (T5).

    bidirectional (encoder): half the buckets for keys on the right (distance > 0), half for
    the left and the query itself. Unidirectional (decoder): keys on the right never occur
    (causal), every bucket serves the distances looking back. Within a half, the first half of
    the buckets are exact distances 0, 1, ...; the rest grow logarithmically up to
    ``max_distance`` and saturate there.
    """
    if not isinstance(relative_position, torch.Tensor) or relative_position.is_floating_point():
        raise TypeError("relative_position: expected an integer tensor of key - query distances")
    if num_buckets < 2 or (bidirectional and num_buckets < 4):
        raise ValueError(f"num_buckets: expected >= 4 (>= 2 unidirectional), got {num_buckets}")
    buckets = torch.zeros_like(relative_position)
    n = num_buckets
    if bidirectional:
        n //= 2
        buckets = buckets + (relative_position > 0).long() * n  # keys to the right: upper half
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)  # looking back only
    exact = n // 2
    if max_distance <= exact:
        raise ValueError(
            f"max_distance: expected > {exact} (the exact buckets), got {max_distance}"
        )
    # log-spaced buckets: exact + log(d / exact) / log(max_distance / exact) * (n - exact)
    scaled = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    large = (exact + (scaled * (n - exact)).long()).clamp(max=n - 1)
    return buckets + torch.where(distance < exact, distance, large)


class RelativePositionBias(nn.Module):
    """One learned scalar per (bucket, head): the additive mask (1, heads, seq_q, seq_k)."""

    def __init__(self, num_buckets: int, n_heads: int, max_distance: int, bidirectional: bool):
        super().__init__()
        self.embedding = nn.Embedding(num_buckets, n_heads)
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional

    def forward(self, seq_q: int, seq_k: int, device=None) -> torch.Tensor:
        query = torch.arange(seq_k - seq_q, seq_k, device=device)[:, None]  # last seq_q positions
        key = torch.arange(seq_k, device=device)[None, :]
        bucket = relative_position_bucket(
            key - query, self.bidirectional, self.num_buckets, self.max_distance
        )
        return self.embedding(bucket).permute(2, 0, 1).unsqueeze(0)
