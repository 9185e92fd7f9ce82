"""The configs of the five families, side by side: what each one chooses.

Every family is the same Transformer block with different switches. Read the
``block_config`` methods top to bottom and you have the table of chapter 02:

    family  layout           norm           positions       FFN        attention   biases
    GPT     decoder-only     LayerNorm pre  learned         GELU       MHA         yes
    BERT    encoder-only     LayerNorm post learned (+type) GELU       MHA         yes
    T5      encoder-decoder  RMSNorm pre    relative bias   ReLU       MHA         no
    LLaMA   decoder-only     RMSNorm pre    RoPE            SwiGLU     GQA         no
    PaLM    decoder-only     LayerNorm pre  RoPE            SwiGLU     MQA         no
            (parallel block: attention and FFN read the same normed input)

Sizes have no defaults: a config says which model it is (``PUBLISHED`` in
:mod:`llmlab.models.counting` holds the papers' configs). Each config validates itself and
names the bad field.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmlab.nn.blocks import BlockConfig
from llmlab.validate import require_int, require_positive_int, require_real

__all__ = [
    "GPTConfig",
    "LlamaConfig",
    "PaLMConfig",
    "BertConfig",
    "EncoderDecoderConfig",
    "T5Config",
]


def _require_sizes(config, names: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """Sizes are positive ints (``optional`` ones may be None), heads divide evenly, dropout is
    in [0, 1). Python and numpy numbers alike: each is stored back as a Python int or float."""
    for name in names:
        if getattr(config, name) is not None or name not in optional:
            setattr(config, name, require_positive_int(getattr(config, name), name))
    if getattr(config, "n_kv_heads", None) and config.n_heads % config.n_kv_heads:
        raise ValueError(
            f"n_kv_heads: expected a divisor of n_heads={config.n_heads}, got {config.n_kv_heads}"
        )
    if getattr(config, "head_dim", None) is None and config.d_model % config.n_heads:
        raise ValueError(
            f"n_heads: expected a divisor of d_model={config.d_model} (or set head_dim), "
            f"got {config.n_heads}"
        )
    config.dropout = require_real(config.dropout, "dropout")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"dropout: expected a float in [0, 1), got {config.dropout!r}")


@dataclass
class GPTConfig:
    """GPT-2 (Radford et al. 2019): learned positions, pre-norm LayerNorm, GELU, tied head.

    ``norm_first=False`` gives GPT-1's post-norm layout (no final norm). ``d_ff`` defaults to
    4 * d_model (8/3 * d_model, rounded up to a multiple of 16, with ``activation="swiglu"``,
    so that the gated FFN keeps about the same parameters). ``positions="rope"`` replaces the
    learned position table by rotary embeddings inside attention (GPT-J and GPT-NeoX rotate
    part of each head; this rotates all of it, as LLaMA does). With ``activation="swiglu"``
    these are the steps from GPT-2's layout towards LLaMA's that chapter 03 measures one at
    a time.
    """

    vocab_size: int
    max_seq: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int | None = None
    norm_eps: float = 1e-5
    norm_first: bool = True
    activation: str = "gelu_tanh"
    dropout: float = 0.0
    tie_embeddings: bool = True
    positions: str = "learned"  # "learned" (GPT-2) | "rope" (GPT-J, GPT-NeoX)
    rope_base: float = 10000.0

    def __post_init__(self):
        _require_sizes(
            self, ("vocab_size", "max_seq", "d_model", "n_layers", "n_heads", "d_ff"), ("d_ff",)
        )
        if self.d_ff is None:
            gated = self.activation == "swiglu"
            self.d_ff = -(-8 * self.d_model // 48) * 16 if gated else 4 * self.d_model
        if self.positions not in ("learned", "rope"):
            raise ValueError(
                f"positions: expected 'learned' (GPT-2) or 'rope' (GPT-J/NeoX), got {self.positions!r}"
            )

    def block_config(self) -> BlockConfig:
        return BlockConfig(
            d_model=self.d_model, n_heads=self.n_heads, d_ff=self.d_ff,
            activation=self.activation, norm="layer", norm_eps=self.norm_eps,
            norm_first=self.norm_first, bias=True, dropout=self.dropout,
        )  # fmt: skip


@dataclass
class _RotaryDecoderConfig:
    """Fields and checks shared by the RoPE decoder-only families (LLaMA, PaLM)."""

    FAMILY = ""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    norm_eps: float = 1e-6
    rope_base: float = 10000.0
    tie_embeddings: bool = False
    dropout: float = 0.0
    max_seq: int | None = None
    positions: str = "rope"

    def __post_init__(self):
        _require_sizes(
            self,
            ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "n_kv_heads", "head_dim"),
            ("n_kv_heads", "head_dim"),
        )
        if self.positions != "rope":
            raise ValueError(f"positions: {self.FAMILY} uses 'rope', got {self.positions!r}")


@dataclass
class LlamaConfig(_RotaryDecoderConfig):
    """LLaMA (Touvron et al. 2023): RMSNorm, RoPE, SwiGLU, grouped-query attention, no biases.

    ``n_kv_heads`` < ``n_heads`` is GQA (LLaMA 2 70B, SmolLM2: 9 query heads share 3 kv heads).
    ``max_seq`` is None: RoPE has no table, so nothing limits the length but memory.
    """

    FAMILY = "LLaMA"

    def block_config(self) -> BlockConfig:
        return BlockConfig(
            d_model=self.d_model, n_heads=self.n_heads, d_ff=self.d_ff,
            n_kv_heads=self.n_kv_heads, head_dim=self.head_dim, activation="swiglu",
            norm="rms", norm_eps=self.norm_eps, norm_first=True, bias=False,
            dropout=self.dropout,
        )  # fmt: skip


@dataclass
class PaLMConfig(_RotaryDecoderConfig):
    """PaLM (Chowdhery et al. 2022): parallel block, multi-query attention, SwiGLU, RoPE,
    no biases anywhere (LayerNorm without bias too), shared input/output embeddings.

    The parallel block computes x + attn(norm(x)) + ffn(norm(x)): one norm per layer and the
    two matmul groups can run at once. ``n_kv_heads=1`` is multi-query attention.
    """

    FAMILY = "PaLM"

    n_kv_heads: int | None = 1
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    def block_config(self) -> BlockConfig:
        return BlockConfig(
            d_model=self.d_model, n_heads=self.n_heads, d_ff=self.d_ff,
            n_kv_heads=self.n_kv_heads, head_dim=self.head_dim, activation="swiglu",
            norm="layer", norm_eps=self.norm_eps, norm_first=True, parallel=True, bias=False,
            dropout=self.dropout,
        )  # fmt: skip


@dataclass
class BertConfig:
    """BERT (Devlin et al. 2019): a post-norm encoder, learned positions + token types,
    a LayerNorm on the embeddings, exact GELU; heads for masked-LM (tied to the embeddings)
    and next-sentence prediction (on a tanh pooler over the first token, [CLS])."""

    vocab_size: int
    max_seq: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int | None = None
    type_vocab_size: int = 2
    norm_eps: float = 1e-12
    dropout: float = 0.0

    def __post_init__(self):
        _require_sizes(
            self,
            ("vocab_size", "max_seq", "d_model", "n_layers", "n_heads", "d_ff", "type_vocab_size"),
            ("d_ff",),
        )
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model

    def block_config(self) -> BlockConfig:
        return BlockConfig(
            d_model=self.d_model, n_heads=self.n_heads, d_ff=self.d_ff, activation="gelu",
            norm="layer", norm_eps=self.norm_eps, norm_first=False, bias=True,
            dropout=self.dropout,
        )  # fmt: skip


POSITIONS = ("sinusoidal", "learned", "relative")
TIED_SCALES = ("input", "output")


@dataclass
class EncoderDecoderConfig:
    """Sizes and choices of the encoder-decoder (defaults: Vaswani et al.'s design, toy sizes).

    ``n_layers`` encoder blocks and ``n_decoder_layers`` (default ``n_layers``) decoder blocks.
    ``positions``: ``"sinusoidal"`` or ``"learned"`` (added to the embeddings; need ``max_seq``)
    or ``"relative"`` (T5's bucketed bias, ``num_buckets`` up to ``max_distance``).
    ``tied_scale``: ``"input"`` multiplies the token embeddings by sqrt(d_model) (Vaswani);
    ``"output"`` multiplies the decoder output by d_model^-0.5 when the head is tied (T5).
    ``init_std``: None keeps PyTorch's initialisation of the linear layers and draws the token
    embeddings from N(0, d_model^-0.5) (unit variance once scaled by sqrt(d_model)); a number
    draws every matrix and embedding from N(0, init_std) with zero biases (GPT-2's scheme).
    ``pad_id``: when set, source ids equal to it are hidden from attention if no
    ``attention_mask`` is given.
    """

    vocab_size: int
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    n_decoder_layers: int | None = None
    head_dim: int | None = None  # default d_model // n_heads (T5's d_kv may differ)
    positions: str = "sinusoidal"
    max_seq: int | None = 64  # longest source or target an absolute position table covers
    num_buckets: int = 32
    max_distance: int = 128
    activation: str = "relu"
    norm: str = "layer"
    norm_eps: float | None = None
    norm_first: bool = True  # pre-norm trains without fuss at any learning rate
    bias: bool = True
    attn_scale: float | None = None  # default 1/sqrt(head_dim)
    dropout: float = 0.0
    tie_embeddings: bool = True
    tied_scale: str = "input"
    init_std: float | None = None
    pad_id: int | None = None

    def __post_init__(self):
        _require_sizes(
            self,
            ("vocab_size", "d_model", "n_heads", "d_ff", "num_buckets", "max_distance", "head_dim"),
            ("head_dim",),
        )
        self.n_layers = require_int(self.n_layers, "n_layers", 0)  # 0: no encoder blocks
        if self.n_decoder_layers is None:
            self.n_decoder_layers = self.n_layers
        self.n_decoder_layers = require_int(self.n_decoder_layers, "n_decoder_layers", 0)
        if self.head_dim is None:
            self.head_dim = self.d_model // self.n_heads
        if self.positions not in POSITIONS:
            raise ValueError(f"positions: expected one of {POSITIONS}, got {self.positions!r}")
        if self.positions != "relative":
            if self.max_seq is None:
                raise ValueError(f"max_seq: positions={self.positions!r} needs a table size")
            self.max_seq = require_positive_int(self.max_seq, "max_seq")
        if self.tied_scale not in TIED_SCALES:
            raise ValueError(f"tied_scale: expected one of {TIED_SCALES}, got {self.tied_scale!r}")
        if self.pad_id is not None:
            self.pad_id = require_int(self.pad_id, "pad_id", 0)
            if self.pad_id >= self.vocab_size:
                raise ValueError(
                    f"pad_id: expected an id in [0, {self.vocab_size}), got {self.pad_id}"
                )
        self.block_config()  # validates the block's fields

    def block_config(self) -> BlockConfig:
        return BlockConfig(
            d_model=self.d_model, n_heads=self.n_heads, d_ff=self.d_ff, head_dim=self.head_dim,
            attn_scale=self.attn_scale, activation=self.activation, norm=self.norm,
            norm_eps=self.norm_eps, norm_first=self.norm_first, bias=self.bias,
            dropout=self.dropout,
        )  # fmt: skip


@dataclass
class T5Config(EncoderDecoderConfig):
    """T5 (Raffel et al. 2020): the encoder-decoder with RMS norm without bias, no biases at
    all, attention scale 1.0, and a learned bias per (head, relative-distance bucket), computed
    in the first layer of each stack and shared by all its layers. ReLU FFN (T5 v1.0). The
    tied head rescales the decoder output by d_model^-0.5; every matrix starts as N(0, 0.02).

    ``head_dim`` is T5's ``d_kv`` (n_heads * head_dim need not equal d_model).
    """

    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    positions: str = "relative"
    max_seq: int | None = None
    norm: str = "rms"
    norm_eps: float | None = 1e-6
    bias: bool = False
    attn_scale: float | None = 1.0
    tied_scale: str = "output"
    init_std: float | None = 0.02
