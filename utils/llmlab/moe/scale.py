"""Mixture of experts at scale, on paper and in numbers (chapter 06, notebook 3).

Published MoE models, their parameters (all of them, and the ones a token uses), the FLOPs a
token costs, and the bytes expert parallelism moves between devices:

- :class:`MoEConfig`: a model as its paper or its ``config.json`` describes it; :data:`GLAM_64B_64E`,
  :data:`SWITCH_C`, :data:`SWITCH_XXL`, :data:`MIXTRAL_8X7B`, :data:`DEEPSEEK_V3`, each with a
  ``source`` saying where every number comes from, and the headline numbers the authors
  published (``published_total``, ``published_active``).
- :func:`count_parameters`: the counts from the formulas below; :func:`flops_per_token`: the
  work per token, beside the same model with every expert on every token.
- :func:`transformers_config`, :func:`transformers_count`: transformers' own model built from a
  config on the ``meta`` device (shapes, no memory), whose parameter count the tests compare with
  ours, exactly.
- :func:`all_to_all_bytes`: what each device sends in the dispatch all-to-all of one MoE layer
  (and the same back in the combine); :func:`simulate_all_to_all` runs that exchange with
  ``torch.distributed`` on CPU processes (backend gloo) and measures it.

The formulas, per layer (d = ``d_model``, H heads of width h, G key/value heads):

    attention (MHA/GQA)   d*H*h (q) + 2*d*G*h (k, v) + H*h*d (o)
    attention (MLA)       d*r_q + r_q*H*(h_nope+h_rope)  (q, through a rank-r_q bottleneck)
                          + d*(r_kv+h_rope) + r_kv*H*(h_nope+h_v)  (k, v through rank r_kv)
                          + H*h_v*d  (o)
    FFN of width f        3*d*f if gated (SwiGLU, GEGLU: gate, up, down) else 2*d*f
    MoE layer             E experts and n_shared shared experts of width f_e, router d*E
    embedding             vocab*d, and vocab*d again for an untied output head

Norm weights (one vector per sub-layer, a final one per stack, MLA's two inner ones) and relative
position biases are counted too, in ``norms`` and ``position``: they are a few millionths of the
total, and counting them is what makes the totals equal transformers' to the parameter. Biases:
none of these models has any in its linear layers. ``active`` is the total less, in every MoE
layer, the E - k routed experts a token does not use: embedding, attention, router, shared
experts and dense layers all count as active, as the published "activated parameters" do.
"""

from __future__ import annotations

import os
import queue as queue_lib
import tempfile
import time
import traceback
from dataclasses import dataclass

import torch

from llmlab.validate import require_int, require_positive_int, require_real

__all__ = [
    "MoEConfig",
    "GLAM_64B_64E",
    "SWITCH_C",
    "SWITCH_XXL",
    "MIXTRAL_8X7B",
    "DEEPSEEK_V3",
    "CONFIGS",
    "n_moe_layers",
    "count_parameters",
    "flops_per_token",
    "transformers_config",
    "transformers_count",
    "all_to_all_bytes",
    "routed_bytes",
    "AllToAllResult",
    "simulate_all_to_all",
]

ATTENTIONS = ("mha", "mla")
POSITIONS = ("none", "t5", "per_layer")


@dataclass(frozen=True)
class MoEConfig:
    """A mixture-of-experts transformer as published.

    Decoder-only unless ``n_encoder_layers`` > 0 (Switch, a T5: an encoder of that many layers,
    and a decoder of ``n_layers`` whose layers also cross-attend to the encoder). In each stack
    the first ``first_dense`` layers have a dense FFN of width ``d_ff_dense``; after them, layer i
    has an MoE FFN when ``(i - first_dense) % moe_every == moe_every - 1`` (transformers'
    convention for Switch: the odd layers when ``moe_every=2``; GLaM puts the MoE layer first in
    each pair, which gives the same count), the others a dense FFN.

    Attention: ``"mha"``, ``n_heads`` query heads of width ``head_dim`` (default ``d_model //
    n_heads``) and ``n_kv_heads`` key/value heads (default ``n_heads``; fewer is GQA); or
    ``"mla"`` (DeepSeek's multi-head latent attention) with ``q_lora_rank`` (0: no query
    bottleneck), ``kv_lora_rank``, ``qk_nope_dim``, ``qk_rope_dim`` and ``v_head_dim``.

    MoE: ``n_experts`` routed experts of width ``d_ff_expert``, ``k`` per token, ``n_shared``
    shared experts of the same width that every token uses. ``gated_experts`` /
    ``gated_dense``: three matrices per FFN (gate, up, down) or two (in, out).

    ``position``: ``"none"`` (RoPE, or nothing: no parameters), ``"t5"`` (T5's relative position
    bias, one ``(rel_buckets, n_heads)`` table in the first layer of each stack) or
    ``"per_layer"`` (one such table in every self-attention layer, as GLaM).
    ``tied_embeddings``: the output head is the input embedding. ``published_total`` and
    ``published_active``: the authors' headline numbers (None: not published).
    """

    name: str
    d_model: int
    n_layers: int
    n_heads: int
    vocab: int
    n_experts: int
    k: int
    d_ff_expert: int
    d_ff_dense: int = 0
    moe_every: int = 1
    first_dense: int = 0
    n_shared: int = 0
    gated_experts: bool = True
    gated_dense: bool = True
    attention: str = "mha"
    n_kv_heads: int | None = None
    head_dim: int | None = None
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_dim: int = 0
    qk_rope_dim: int = 0
    v_head_dim: int = 0
    n_encoder_layers: int = 0
    tied_embeddings: bool = False
    position: str = "none"
    rel_buckets: int = 32
    router_bias: bool = False
    published_total: float | None = None
    published_active: float | None = None
    source: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"name: expected a non-empty str, got {self.name!r}")
        for field in ("d_model", "n_layers", "n_heads", "vocab", "n_experts", "k",
                      "d_ff_expert", "moe_every", "rel_buckets"):  # fmt: skip
            require_positive_int(getattr(self, field), field)
        for field in ("d_ff_dense", "first_dense", "n_shared", "q_lora_rank", "kv_lora_rank",
                      "qk_nope_dim", "qk_rope_dim", "v_head_dim", "n_encoder_layers"):  # fmt: skip
            require_int(getattr(self, field), field, 0)
        for field in ("n_kv_heads", "head_dim"):
            if getattr(self, field) is not None:
                require_positive_int(getattr(self, field), field)
        for field in ("gated_experts", "gated_dense", "tied_embeddings", "router_bias"):
            if not isinstance(getattr(self, field), bool):
                raise TypeError(f"{field}: expected a bool, got {getattr(self, field)!r}")
        if self.k > self.n_experts:
            raise ValueError(f"k: expected at most n_experts = {self.n_experts}, got {self.k}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention: expected one of {ATTENTIONS}, got {self.attention!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"position: expected one of {POSITIONS}, got {self.position!r}")
        if self.first_dense > self.n_layers:
            raise ValueError(
                f"first_dense: expected at most n_layers = {self.n_layers}, got {self.first_dense}"
            )
        if self.attention == "mha":
            if self.head_dim is None and self.d_model % self.n_heads:
                raise ValueError(
                    f"head_dim: d_model = {self.d_model} is not a multiple of n_heads = "
                    f"{self.n_heads}; give head_dim"
                )
            if self.n_heads % self.kv_heads:
                raise ValueError(
                    f"n_kv_heads: expected a divisor of n_heads = {self.n_heads}, "
                    f"got {self.n_kv_heads}"
                )
        elif not (self.kv_lora_rank and self.qk_rope_dim and self.qk_nope_dim and self.v_head_dim):
            raise ValueError(
                "attention: 'mla' needs kv_lora_rank, qk_nope_dim, qk_rope_dim and v_head_dim > 0"
            )
        has_dense = self.first_dense > 0 or self.moe_every > 1
        if has_dense and not self.d_ff_dense:
            raise ValueError(
                "d_ff_dense: this config has dense FFN layers (first_dense > 0 or moe_every > 1); "
                "expected their width > 0"
            )
        if self.published_total is not None:
            require_real(self.published_total, "published_total")
        if self.published_active is not None:
            require_real(self.published_active, "published_active")

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_width(self) -> int:
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def encoder_decoder(self) -> bool:
        return self.n_encoder_layers > 0


def _stacks(cfg: MoEConfig) -> list[tuple[int, bool]]:
    """(n_layers, is_decoder_of_an_encoder_decoder) for each stack."""
    if cfg.encoder_decoder:
        return [(cfg.n_encoder_layers, False), (cfg.n_layers, True)]
    return [(cfg.n_layers, False)]


def _moe_in_stack(cfg: MoEConfig, n: int) -> int:
    return max(0, n - cfg.first_dense) // cfg.moe_every


def n_moe_layers(cfg: MoEConfig) -> int:
    """How many MoE layers the model has (all stacks)."""
    _check_cfg(cfg)
    return sum(_moe_in_stack(cfg, n) for n, _ in _stacks(cfg))


def _check_cfg(cfg) -> None:
    if not isinstance(cfg, MoEConfig):
        raise TypeError(f"cfg: expected an MoEConfig, got {type(cfg).__name__}")


def _ffn(d: int, f: int, gated: bool) -> int:
    return (3 if gated else 2) * d * f


def _attention_params(cfg: MoEConfig) -> tuple[int, int]:
    """(projection weights, inner norm weights) of one self-attention block."""
    d, H = cfg.d_model, cfg.n_heads
    if cfg.attention == "mha":
        h, G = cfg.head_width, cfg.kv_heads
        return d * H * h + 2 * d * G * h + H * h * d, 0
    qk = cfg.qk_nope_dim + cfg.qk_rope_dim
    if cfg.q_lora_rank:
        q = d * cfg.q_lora_rank + cfg.q_lora_rank * H * qk
    else:
        q = d * H * qk
    kv = d * (cfg.kv_lora_rank + cfg.qk_rope_dim) + cfg.kv_lora_rank * H * (
        cfg.qk_nope_dim + cfg.v_head_dim
    )
    o = H * cfg.v_head_dim * d
    return q + kv + o, cfg.q_lora_rank + cfg.kv_lora_rank


def _cross_attention_params(cfg: MoEConfig) -> int:
    d, H, h, G = cfg.d_model, cfg.n_heads, cfg.head_width, cfg.kv_heads
    return d * H * h + 2 * d * G * h + H * h * d


def count_parameters(cfg: MoEConfig) -> dict[str, int]:
    """The parameters of ``cfg`` from the formulas in the module doc.

    Returns ``total``; ``active``, the ones a token uses (k of the E routed experts in each MoE
    layer, everything else); ``experts``, all routed experts; ``embedding``, the input embedding
    and the output head (counted once when tied); and the rest of the total: ``attention``
    (projections, cross-attention included), ``dense_ffn``, ``shared`` (shared experts),
    ``router``, ``norms``, ``position`` (relative position biases); plus ``per_expert`` and
    ``moe_layers``. ``total`` is the sum of ``embedding, attention, dense_ffn, experts, shared,
    router, norms, position``.
    """
    _check_cfg(cfg)
    d = cfg.d_model
    per_expert = _ffn(d, cfg.d_ff_expert, cfg.gated_experts)
    attn_self, attn_norms = _attention_params(cfg)
    c = dict.fromkeys(
        ("attention", "dense_ffn", "experts", "shared", "router", "norms", "position"), 0
    )
    moe_layers = 0
    for n, is_decoder in _stacks(cfg):
        n_moe = _moe_in_stack(cfg, n)
        moe_layers += n_moe
        sublayers = 3 if is_decoder else 2  # self-attention, (cross-attention,) FFN
        c["attention"] += n * attn_self
        if is_decoder:
            c["attention"] += n * _cross_attention_params(cfg)
        c["norms"] += n * (sublayers * d + attn_norms) + d  # + the stack's final norm
        c["dense_ffn"] += (n - n_moe) * _ffn(d, cfg.d_ff_dense, cfg.gated_dense)
        c["experts"] += n_moe * cfg.n_experts * per_expert
        c["shared"] += n_moe * cfg.n_shared * per_expert
        c["router"] += n_moe * (d * cfg.n_experts + (cfg.n_experts if cfg.router_bias else 0))
        if cfg.position == "t5":
            c["position"] += cfg.rel_buckets * cfg.n_heads
        elif cfg.position == "per_layer":
            c["position"] += n * cfg.rel_buckets * cfg.n_heads
    c["embedding"] = cfg.vocab * d * (1 if cfg.tied_embeddings else 2)
    total = sum(c.values())
    inactive = moe_layers * (cfg.n_experts - cfg.k) * per_expert
    return {"total": total, "active": total - inactive, **c,
            "per_expert": per_expert, "moe_layers": moe_layers}  # fmt: skip


def flops_per_token(cfg: MoEConfig, seq: int = 0) -> dict[str, int | float]:
    """The FLOPs of one token's forward pass, counting a multiply-add as 2.

    ``active``: 2 x the matrix weights the token multiplies (attention projections, the router,
    its k routed experts and the shared ones, the dense FFNs, the output head; not the input
    embedding, a table look-up, nor norms and position biases). ``attention``: the scores and
    the weighted sum against ``seq`` earlier positions, ``2 * n_heads * (d_qk + d_v) * seq`` per
    attention block (0 when ``seq=0``; a causal pass over a sequence of length L averages
    ``seq = L/2``). ``total = active + attention``. ``dense``: the same model with every expert
    on every token (``2 x`` all the matrix weights, plus ``attention``): the FLOPs MoE saves,
    ``ratio = dense / total``. For an encoder-decoder, "a token" is one encoder token plus one
    decoder token (every stack once).
    """
    _check_cfg(cfg)
    seq = require_int(seq, "seq", 0)
    c = count_parameters(cfg)
    head = cfg.vocab * cfg.d_model  # the output projection, tied or not
    matmul_all = c["attention"] + c["dense_ffn"] + c["experts"] + c["shared"] + c["router"] + head
    matmul_active = matmul_all - c["moe_layers"] * (cfg.n_experts - cfg.k) * c["per_expert"]
    if cfg.attention == "mla":
        qk, v = cfg.qk_nope_dim + cfg.qk_rope_dim, cfg.v_head_dim
    else:
        qk = v = cfg.head_width
    blocks = sum(n * (2 if dec else 1) for n, dec in _stacks(cfg))
    attention = 2 * cfg.n_heads * (qk + v) * seq * blocks
    total = 2 * matmul_active + attention
    dense = 2 * matmul_all + attention
    return {"active": 2 * matmul_active, "attention": attention, "total": total,
            "dense": dense, "ratio": dense / total}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Published configurations
# --------------------------------------------------------------------------------------------

GLAM_64B_64E = MoEConfig(
    name="GLaM 64B/64E",
    d_model=8192,
    n_layers=64,
    n_heads=128,
    head_dim=128,
    vocab=256_000,
    n_experts=64,
    k=2,
    d_ff_expert=32768,
    d_ff_dense=32768,
    moe_every=2,
    gated_experts=False,
    gated_dense=True,
    tied_embeddings=True,
    position="per_layer",
    published_total=1.2e12,
    published_active=96.6e9,
    source=(
        "Du et al. 2022, GLaM (arXiv:2112.06905), its table of model sizes, row 64B/64E: 64 "
        "layers, d_model 8192, FFN hidden 32768, 128 heads of 128, 64 experts, 1.2T parameters, "
        "96.6B activated (the table's text was not retrievable here: the dimensions are as "
        "reported in secondary notes, and the formulas reproduce the 96.6B to three digits; "
        "Google's blog: 1.2T, 64 experts, 32 MoE layers, ~97B activated); top-2 gating, every "
        "other FFN an MoE layer, "
        "SentencePiece vocabulary of 256K (section 3/5). Layer structure from Google's praxis "
        "code (praxis/layers/glam.py, transformers.TransformerFeedForwardMoe): dense FFNs gated "
        "(GEGLU, two wi and one wo), experts two matrices (wi [E, d, f], wo [E, f, d]), router "
        "[d, E] without bias, RMSNorm without bias, a relative position bias in every "
        "attention layer, the softmax sharing the embedding. Google's blog (Dec 2021): 32 MoE "
        "layers, 64 experts, ~97B activated."
    ),
)
"""GLaM 64B/64E. Assumed, not published as a number: the vocabulary as 256,000 (the paper says
"256K"; 262,144 adds 0.05B) and the relative-bias buckets as 32 (praxis' default). With these,
the formulas give 1.162T total and 96.6B active, the paper's 96.6B to three digits."""

SWITCH_C = MoEConfig(
    name="Switch-C",
    d_model=2080,
    n_encoder_layers=15,
    n_layers=15,
    n_heads=30,
    head_dim=64,
    vocab=32128,
    n_experts=2048,
    k=1,
    d_ff_expert=6144,
    moe_every=1,
    gated_experts=False,
    gated_dense=False,
    tied_embeddings=False,
    position="t5",
    published_total=1571e9,
    source=(
        "Fedus et al. 2021/2022, Switch Transformers (arXiv:2101.03961, JMLR 23), Table 9: "
        "Switch-C 1571B parameters, 2048 experts, expert frequency 1 (every FFN is an MoE), "
        "top-1. Dimensions from the released checkpoint's configs: t5x/flaxformer "
        "flaxformer/t5x/configs/moe/models/switch_c.gin (15 encoder + 15 decoder layers, "
        "30 heads of 64, EMBED_DIM 2080, MLP_DIM 6144, 2048 experts, all MLPs sparse, relu, a "
        "separate output-logits layer) and Hugging Face google/switch-c-2048 config.json "
        "(d_model 2080, d_ff 6144, d_kv 64, num_heads 30, is_gated_act false, vocab 32128, "
        "T5 relative attention bias with 32 buckets)."
    ),
)
"""Switch-C. google/switch-c-2048's config.json says ``num_decoder_layers: 12`` beside
``num_sparse_decoder_layers: 15``; the t5x gin file it was converted from says 15 decoder layers,
and 15 is what gives the paper's 1571B: we take 15. The paper publishes no activated-parameter
count for Switch (it gives FLOPs per sequence); ``published_active`` is None."""

SWITCH_XXL = MoEConfig(
    name="Switch-XXL",
    d_model=4096,
    n_encoder_layers=24,
    n_layers=24,
    n_heads=64,
    head_dim=64,
    vocab=32128,
    n_experts=128,
    k=1,
    d_ff_expert=10240,
    d_ff_dense=10240,
    moe_every=2,
    gated_experts=True,
    gated_dense=True,
    tied_embeddings=False,
    position="t5",
    published_total=395e9,
    source=(
        "Fedus et al. 2021/2022, Switch Transformers (arXiv:2101.03961), Table 9: Switch-XXL "
        "395B parameters, GEGLU FFNs, d_ff 10240, d_kv 64, 64 heads, 24 layers, expert "
        "frequency 1/2, top-1. Dimensions and experts from t5x/flaxformer "
        "flaxformer/t5x/configs/moe/models/switch_xxl.gin (24 + 24 layers, 64 heads of 64, "
        "EMBED_DIM 4096, MLP_DIM 10240, NUM_EXPERTS 128, 12 sparse layers per stack, GEGLU in "
        "dense and expert MLPs, a separate output-logits layer) and the released checkpoint "
        "google/switch-xxl-128 (128 experts); vocabulary 32128 as the other T5/Switch "
        "checkpoints."
    ),
)
"""Switch-XXL with 128 experts, as the t5x config and the released checkpoint have it: that is
what gives the 395B of the paper's Table 9 (with 64 experts the same formulas give about 200B)."""

MIXTRAL_8X7B = MoEConfig(
    name="Mixtral 8x7B",
    d_model=4096,
    n_layers=32,
    n_heads=32,
    n_kv_heads=8,
    head_dim=128,
    vocab=32000,
    n_experts=8,
    k=2,
    d_ff_expert=14336,
    gated_experts=True,
    tied_embeddings=False,
    published_total=46.7e9,
    published_active=12.9e9,
    source=(
        "mistralai/Mixtral-8x7B-v0.1 config.json: hidden_size 4096, num_hidden_layers 32, "
        "num_attention_heads 32, num_key_value_heads 8, intermediate_size 14336, "
        "num_local_experts 8, num_experts_per_tok 2, vocab_size 32000, "
        "tie_word_embeddings false, SwiGLU experts, RoPE. Headline numbers: Jiang et al. 2024, "
        "Mixtral of Experts (arXiv:2401.04088) and Mistral's announcement: 46.7B total, 12.9B "
        "active (47B / 13B in the paper)."
    ),
)

DEEPSEEK_V3 = MoEConfig(
    name="DeepSeek-V3",
    d_model=7168,
    n_layers=61,
    n_heads=128,
    vocab=129280,
    n_experts=256,
    k=8,
    n_shared=1,
    d_ff_expert=2048,
    d_ff_dense=18432,
    first_dense=3,
    gated_experts=True,
    gated_dense=True,
    attention="mla",
    q_lora_rank=1536,
    kv_lora_rank=512,
    qk_nope_dim=128,
    qk_rope_dim=64,
    v_head_dim=128,
    tied_embeddings=False,
    published_total=671e9,
    published_active=37e9,
    source=(
        "deepseek-ai/DeepSeek-V3 config.json: hidden_size 7168, num_hidden_layers 61, "
        "first_k_dense_replace 3, intermediate_size 18432, moe_intermediate_size 2048, "
        "n_routed_experts 256, n_shared_experts 1, num_experts_per_tok 8, MLA with "
        "num_attention_heads 128, q_lora_rank 1536, kv_lora_rank 512, qk_nope_head_dim 128, "
        "qk_rope_head_dim 64, v_head_dim 128, vocab_size 129280, tie_word_embeddings false. "
        "Headline numbers: DeepSeek-V3 Technical Report (arXiv:2412.19437): 671B total, 37B "
        "activated per token, not counting the multi-token-prediction module (num_nextn_"
        "predict_layers 1) that the released checkpoint adds."
    ),
)
"""DeepSeek-V3 without its multi-token-prediction module (as the 671B is, and as transformers
builds it). Each MoE layer also has ``e_score_correction_bias`` (n_experts numbers), the
auxiliary-loss-free balancing bias: not trained by gradient, a buffer in transformers, not counted
here (58 x 256 = 14,848 numbers)."""

CONFIGS: dict[str, MoEConfig] = {
    c.name: c for c in (GLAM_64B_64E, SWITCH_C, SWITCH_XXL, MIXTRAL_8X7B, DEEPSEEK_V3)
}


# --------------------------------------------------------------------------------------------
# transformers' models, on the meta device
# --------------------------------------------------------------------------------------------


def _infer_family(cfg: MoEConfig) -> str:
    if cfg.encoder_decoder:
        return "switch"
    if cfg.attention == "mla":
        return "deepseek_v3"
    return "mixtral"


def transformers_config(cfg: MoEConfig):
    """transformers' config for ``cfg``: a ``MixtralConfig`` (decoder-only MHA/GQA, gated
    experts, no shared experts, every layer MoE, RoPE), a ``DeepseekV3Config`` (MLA) or a
    ``SwitchTransformersConfig`` (encoder-decoder, two-matrix relu experts, T5 position bias).
    A config that none of them can express (GLaM's per-layer biases and ungated experts beside
    gated dense FFNs, for one) raises ValueError."""
    _check_cfg(cfg)
    family = _infer_family(cfg)
    why = None
    if family == "mixtral":
        if cfg.n_shared or cfg.moe_every != 1 or cfg.first_dense or not cfg.gated_experts:
            why = "Mixtral has every FFN an MoE of gated experts and no shared experts"
        elif cfg.position != "none" or cfg.router_bias:
            why = "Mixtral has RoPE (no position parameters) and a router without bias"
    elif family == "deepseek_v3":
        if cfg.moe_every != 1 or not (cfg.gated_experts and cfg.gated_dense):
            why = "DeepSeek-V3 has gated FFNs and every layer after the first dense ones MoE"
        elif cfg.position != "none" or cfg.router_bias:
            why = "DeepSeek-V3 has RoPE (no position parameters) and no router bias"
    elif cfg.gated_experts or cfg.gated_dense or cfg.n_shared or cfg.first_dense:
        why = "transformers' Switch has two-matrix experts and dense FFNs and no shared experts"
    elif cfg.position != "t5" or cfg.d_ff_dense not in (0, cfg.d_ff_expert):
        why = "transformers' Switch has T5's position bias and one d_ff for experts and dense"
    elif cfg.n_kv_heads not in (None, cfg.n_heads) or cfg.k != 1:
        why = "transformers' Switch has multi-head attention and top-1 routing"
    if why:
        raise ValueError(f"cfg: {cfg.name} has no transformers equivalent here: {why}")

    if family == "mixtral":
        from transformers import MixtralConfig

        return MixtralConfig(
            vocab_size=cfg.vocab, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff_expert,
            num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_width,
            num_local_experts=cfg.n_experts, num_experts_per_tok=cfg.k,
            tie_word_embeddings=cfg.tied_embeddings,
        )  # fmt: skip
    if family == "deepseek_v3":
        from transformers import DeepseekV3Config

        return DeepseekV3Config(
            vocab_size=cfg.vocab, hidden_size=cfg.d_model,
            intermediate_size=cfg.d_ff_dense or cfg.d_ff_expert,
            moe_intermediate_size=cfg.d_ff_expert, num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,
            n_shared_experts=cfg.n_shared, n_routed_experts=cfg.n_experts,
            num_experts_per_tok=cfg.k, first_k_dense_replace=cfg.first_dense,
            q_lora_rank=cfg.q_lora_rank or None, kv_lora_rank=cfg.kv_lora_rank,
            qk_nope_head_dim=cfg.qk_nope_dim, qk_rope_head_dim=cfg.qk_rope_dim,
            v_head_dim=cfg.v_head_dim, n_group=1, topk_group=1,
            tie_word_embeddings=cfg.tied_embeddings,
        )  # fmt: skip
    from transformers import SwitchTransformersConfig

    n_sparse_enc = _moe_in_stack(cfg, cfg.n_encoder_layers)
    n_sparse_dec = _moe_in_stack(cfg, cfg.n_layers)
    return SwitchTransformersConfig(
        vocab_size=cfg.vocab, d_model=cfg.d_model, d_kv=cfg.head_width, d_ff=cfg.d_ff_expert,
        num_layers=cfg.n_encoder_layers, num_decoder_layers=cfg.n_layers,
        num_sparse_encoder_layers=n_sparse_enc, num_sparse_decoder_layers=n_sparse_dec,
        num_heads=cfg.n_heads, num_experts=cfg.n_experts, router_bias=cfg.router_bias,
        relative_attention_num_buckets=cfg.rel_buckets, is_gated_act=False,
        feed_forward_proj="relu", tie_word_embeddings=cfg.tied_embeddings,
    )  # fmt: skip


def transformers_count(cfg: MoEConfig) -> dict[str, int]:
    """transformers' causal-LM (Mixtral, DeepSeek-V3) or seq2seq (Switch) model for ``cfg``,
    built on the ``meta`` device (shapes only: no memory, no initialisation), and its counts:
    ``total`` (``model.parameters()``, a tied weight once), ``buffers`` (numbers in persistent
    buffers, e.g. DeepSeek-V3's ``e_score_correction_bias``) and ``experts`` (the routed
    experts' parameters, found by name).

    One known difference: transformers' Switch ties its encoder's and decoder's input
    embeddings to the shared one only when ``tie_word_embeddings`` is true; untied, it holds
    four ``vocab x d_model`` tables (shared, encoder, decoder, output head) where the model
    (T5's layout, and :func:`count_parameters`) has two, one input table for both stacks and the
    head: ``total`` is then ``2 * vocab * d_model`` above ours."""
    hf_config = transformers_config(cfg)
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if cfg.encoder_decoder else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(hf_config)
    total = sum(p.numel() for p in model.parameters())
    experts = sum(
        p.numel()
        for name, p in model.named_parameters()
        if ".experts." in name and "shared" not in name
    )
    buffers = sum(
        b.numel()
        for name, b in model.named_buffers()
        if "rotary" not in name and "inv_freq" not in name
    )
    return {"total": total, "experts": experts, "buffers": buffers}


# --------------------------------------------------------------------------------------------
# Expert parallelism: the all-to-all
# --------------------------------------------------------------------------------------------


def all_to_all_bytes(
    tokens_per_device: int, d_model: int, k: int, n_devices: int, bytes_per_value: int = 2
) -> float:
    """The bytes each device sends in one MoE layer's dispatch all-to-all, expected under uniform
    routing (the combine sends as many back).

    Each of the device's ``tokens_per_device`` tokens goes to ``k`` experts; with the experts
    spread evenly over ``n_devices`` devices and uniform routing, a fraction
    ``(n_devices - 1) / n_devices`` of those assignments is on another device, and each carries
    the token's ``d_model`` values of ``bytes_per_value`` bytes (2: bf16)::

        tokens_per_device * k * d_model * bytes_per_value * (n_devices - 1) / n_devices

    Only the hidden vectors: the expert ids and counts that travel with them are a few bytes
    per token, and capacity limits (dropped tokens) are not modelled."""
    t = require_int(tokens_per_device, "tokens_per_device", 0)
    d = require_positive_int(d_model, "d_model")
    k = require_positive_int(k, "k")
    n = require_positive_int(n_devices, "n_devices")
    b = require_positive_int(bytes_per_value, "bytes_per_value")
    return t * k * d * b * (n - 1) / n


def routed_bytes(
    experts: torch.Tensor, n_experts: int, n_devices: int, rank: int, d_model: int,
    bytes_per_value: int = 2,
) -> int:  # fmt: skip
    """The bytes device ``rank`` sends in the dispatch for an actual routing: ``experts`` (T, k)
    the expert of each assignment, experts placed ``n_experts / n_devices`` per device in order
    (expert e on device ``e // (n_experts / n_devices)``); each assignment to another device
    carries ``d_model`` values of ``bytes_per_value`` bytes. :func:`all_to_all_bytes` is its
    expectation under uniform routing."""
    if not isinstance(experts, torch.Tensor) or experts.dim() != 2:
        raise ValueError(
            "experts: expected a 2-D tensor (tokens, k) of expert ids, got "
            f"{getattr(experts, 'shape', type(experts).__name__)}"
        )
    per_device = _experts_per_device(n_experts, n_devices)
    rank = require_int(rank, "rank", 0)
    if rank >= n_devices:
        raise ValueError(f"rank: expected an int < n_devices = {n_devices}, got {rank}")
    d = require_positive_int(d_model, "d_model")
    b = require_positive_int(bytes_per_value, "bytes_per_value")
    leaving = int((experts.long() // per_device != rank).sum())
    return leaving * d * b


def _experts_per_device(n_experts, n_devices) -> int:
    e = require_positive_int(n_experts, "n_experts")
    n = require_positive_int(n_devices, "n_devices")
    if e % n:
        raise ValueError(
            f"n_experts: expected a multiple of n_devices = {n} (experts spread evenly), got {e}"
        )
    return e // n


@dataclass
class AllToAllResult:
    """What :func:`simulate_all_to_all` measured, one entry per device (rank) in each list.

    ``sent_bytes``: bytes of hidden vectors sent to other devices in the dispatch (the rows for
    experts on the device itself stay in place and are not counted); ``received_bytes``: the
    same, received; ``combine_sent_bytes``: bytes sent back in the combine; ``leaving``:
    assignments (token, expert) that left the device; ``routed_bytes``: :func:`routed_bytes` on
    each device's actual routing; ``expected_bytes``: :func:`all_to_all_bytes`, the expectation
    under uniform routing; ``metadata_bytes``: the expert ids and counts sent beside the vectors;
    ``wall_s``: seconds of each device's dispatch plus combine (after a barrier);
    ``max_error``: the largest difference between the combined outputs and the same MoE layer
    computed on the device alone; ``collective``: ``"all_to_all_single"`` (gloo's all-to-all)
    or ``"send/recv"`` (the fallback, where the backend lacks it)."""

    n_devices: int
    tokens_per_device: int
    d_model: int
    n_experts: int
    k: int
    bytes_per_value: int
    sent_bytes: list[int]
    received_bytes: list[int]
    combine_sent_bytes: list[int]
    leaving: list[int]
    routed_bytes: list[int]
    expected_bytes: float
    metadata_bytes: list[int]
    wall_s: list[float]
    max_error: float
    collective: str


def _route(x: torch.Tensor, spec: dict, rank: int):
    """Each token's k experts and their weights: a random linear router (the same on every
    device, from ``seed``), softmax then top-k, renormalised; or, with ``routing="balanced"``,
    assignments dealt round-robin over the experts with equal weights."""
    T, k, E = spec["tokens"], spec["k"], spec["n_experts"]
    if spec["routing"] == "balanced":
        ids = (torch.arange(T * k) + rank * T * k) % E
        experts = ids.reshape(T, k)
        return experts, torch.full((T, k), 1.0 / k, dtype=torch.float64)
    gen = torch.Generator().manual_seed(spec["seed"])
    router = torch.randn(spec["d_model"], E, generator=gen, dtype=torch.float64)
    probs = torch.softmax(x.double() @ router, dim=-1)
    weights, experts = probs.topk(k, dim=-1)
    return experts, weights / weights.sum(-1, keepdim=True)


def _tokens(spec: dict, rank: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(spec["seed"] + 1 + rank)
    return torch.randn(spec["tokens"], spec["d_model"], generator=gen).to(spec["dtype"])


def _exchange(out, inp, out_splits, in_splits, use_collective: bool) -> None:
    import torch.distributed as dist

    if use_collective:
        dist.all_to_all_single(out, inp, output_split_sizes=out_splits, input_split_sizes=in_splits)
        return
    rank, n = dist.get_rank(), dist.get_world_size()
    ins, outs = inp.split(in_splits), out.split(out_splits)
    outs[rank].copy_(ins[rank])
    requests = []
    for peer in range(n):
        if peer != rank:
            if in_splits[peer]:
                requests.append(dist.isend(ins[peer].contiguous(), peer))
            if out_splits[peer]:
                requests.append(dist.irecv(outs[peer], peer))
    for r in requests:
        r.wait()


def _all_to_all_worker(rank: int, spec: dict, results) -> None:
    """One device of :func:`simulate_all_to_all` (a spawned process)."""
    import datetime

    import torch.distributed as dist

    try:
        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo", init_method=spec["init_method"], rank=rank, world_size=spec["n"],
            timeout=datetime.timedelta(seconds=spec["timeout"]),
        )  # fmt: skip
        n, E, k, d = spec["n"], spec["n_experts"], spec["k"], spec["d_model"]
        per_device = E // n
        x = _tokens(spec, rank)
        experts, weights = _route(x, spec, rank)
        dest = (experts // per_device).reshape(-1)
        order = torch.argsort(dest, stable=True)  # assignments sorted by destination device
        rows = x[order // k].contiguous()
        row_experts = experts.reshape(-1)[order].contiguous()
        send_counts = torch.bincount(dest, minlength=n)
        recv_counts = torch.empty_like(send_counts)

        use_collective = True
        try:
            dist.all_to_all_single(recv_counts, send_counts)
        except (RuntimeError, NotImplementedError):
            use_collective = False
            _exchange(recv_counts, send_counts, [1] * n, [1] * n, False)
        sends, recvs = send_counts.tolist(), recv_counts.tolist()

        dist.barrier()
        start = time.perf_counter()
        got = x.new_empty(sum(recvs), d)
        _exchange(got, rows, recvs, sends, use_collective)  # dispatch
        got_experts = row_experts.new_empty(sum(recvs))
        _exchange(got_experts, row_experts, recvs, sends, use_collective)
        # the experts: expert e scales its rows by (e + 1), enough to check who computed what
        out = got * (got_experts + 1).to(got.dtype)[:, None]
        back = rows.new_empty(rows.shape)
        _exchange(back, out, sends, recvs, use_collective)  # combine
        wall = time.perf_counter() - start

        y = torch.zeros(x.shape, dtype=torch.float64)
        flat_w = weights.reshape(-1)[order]
        y.index_add_(0, order // k, back.double() * flat_w[:, None])
        ref = (x.double()[:, None, :] * (experts + 1).double()[..., None] * weights[..., None]).sum(
            1
        )
        row_bytes = d * x.element_size()
        off = [c for i, c in enumerate(sends) if i != rank]
        off_recv = [c for i, c in enumerate(recvs) if i != rank]
        results.put((rank, {
            "sent": sum(off) * row_bytes,
            "received": sum(off_recv) * row_bytes,
            "combine_sent": sum(off_recv) * row_bytes,
            "leaving": int((dest != rank).sum()),
            "routed": routed_bytes(experts, E, n, rank, d, x.element_size()),
            "metadata": (sum(off) * row_experts.element_size() + n * send_counts.element_size()),
            "wall": wall,
            "error": float((y - ref).abs().max()) if y.numel() else 0.0,
            "collective": "all_to_all_single" if use_collective else "send/recv",
        }))  # fmt: skip
    except BaseException:  # report any failure to the parent rather than hang it
        results.put((rank, {"exception": traceback.format_exc()}))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def simulate_all_to_all(
    n_devices: int = 2,
    tokens_per_device: int = 64,
    d_model: int = 32,
    n_experts: int = 4,
    k: int = 2,
    seed: int = 0,
    routing: str = "random",
    dtype: torch.dtype = torch.float32,
    timeout: float = 60.0,
) -> AllToAllResult:
    """Run one MoE layer's expert-parallel dispatch and combine on ``n_devices`` CPU processes.

    Each process is a device (``torch.multiprocessing``, spawned; ``torch.distributed`` with
    backend ``"gloo"``, meeting through a file store in a temporary directory) holding
    ``n_experts / n_devices`` experts (device r: experts ``r*E/n ... (r+1)*E/n - 1``) and
    ``tokens_per_device`` random tokens of width ``d_model`` in ``dtype``. ``routing``:
    ``"random"``, a random linear router (softmax, top-k; the same router on every device, from
    ``seed``), or ``"balanced"``, assignments dealt round-robin over the experts (exactly uniform
    when ``tokens_per_device * k`` is a multiple of ``n_experts``). Each device sorts its
    assignments by destination, exchanges the counts, sends the rows (``all_to_all_single``
    with uneven splits; point-to-point ``isend``/``irecv`` if the backend lacked it), the
    experts compute (expert e scales by ``e + 1``), and the combine sends the results back,
    where each token sums its k outputs with its router weights and is checked against the same
    layer computed locally. ``timeout`` (seconds) bounds the whole run: a device that fails or
    hangs raises RuntimeError with its traceback, and every process is joined (or terminated).
    """
    n = require_positive_int(n_devices, "n_devices")
    t = require_positive_int(tokens_per_device, "tokens_per_device")
    d = require_positive_int(d_model, "d_model")
    _experts_per_device(n_experts, n)
    k = require_positive_int(k, "k")
    if k > n_experts:
        raise ValueError(f"k: expected at most n_experts = {n_experts}, got {k}")
    seed = require_int(seed, "seed", 0)
    if routing not in ("random", "balanced"):
        raise ValueError(f"routing: expected 'random' or 'balanced', got {routing!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")
    timeout = require_real(timeout, "timeout")
    if not timeout > 0:
        raise ValueError(f"timeout: expected a number of seconds > 0, got {timeout}")

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    deadline = time.monotonic() + timeout
    outcome: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="llmlab_a2a_") as tmp:
        spec = {"n": n, "tokens": t, "d_model": d, "n_experts": n_experts, "k": k,
                "seed": seed, "routing": routing, "dtype": dtype, "timeout": timeout,
                "init_method": "file://" + os.path.join(tmp, "store")}  # fmt: skip
        procs = [
            ctx.Process(target=_all_to_all_worker, args=(r, spec, results), daemon=True)
            for r in range(n)
        ]
        try:
            for p in procs:
                p.start()
            while len(outcome) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    rank, out = results.get(timeout=min(left, 1.0))
                except queue_lib.Empty:
                    dead = [p for p in procs if p.exitcode not in (None, 0)]
                    if dead and results.empty():
                        break
                    continue
                outcome[rank] = out
                if "exception" in out:
                    break
        finally:
            started = [p for p in procs if p.pid is not None]
            for p in started:
                p.join(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
            for p in started:
                if p.is_alive():
                    p.terminate()
                    p.join(timeout=5.0)
                if p.is_alive():
                    p.kill()
                    p.join()
            results.close()

    errors = [
        f"device {r}:\n{o['exception']}" for r, o in sorted(outcome.items()) if "exception" in o
    ]
    if errors:
        raise RuntimeError("simulate_all_to_all: a device failed\n" + "\n".join(errors))
    if len(outcome) < n:
        missing = sorted(set(range(n)) - set(outcome))
        codes = {r: procs[r].exitcode for r in missing}
        raise RuntimeError(
            f"simulate_all_to_all: devices {missing} gave no result within timeout = {timeout} s "
            f"(exit codes {codes}; a script that calls this needs the "
            "`if __name__ == '__main__':` guard, as spawned processes re-import it)"
        )
    rows = [outcome[r] for r in range(n)]
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return AllToAllResult(
        n_devices=n, tokens_per_device=t, d_model=d, n_experts=n_experts, k=k,
        bytes_per_value=itemsize,
        sent_bytes=[o["sent"] for o in rows], received_bytes=[o["received"] for o in rows],
        combine_sent_bytes=[o["combine_sent"] for o in rows],
        leaving=[o["leaving"] for o in rows], routed_bytes=[o["routed"] for o in rows],
        expected_bytes=all_to_all_bytes(t, d, k, n, itemsize),
        metadata_bytes=[o["metadata"] for o in rows], wall_s=[o["wall"] for o in rows],
        max_error=max(o["error"] for o in rows), collective=rows[0]["collective"],
    )  # fmt: skip
