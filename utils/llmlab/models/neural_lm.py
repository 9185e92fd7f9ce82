"""The neural language models between the n-gram and the Transformer: an MLP and RNNs.

Era 2 of chapter 02. Both replace the n-gram's count table by learned embeddings, so that
similar tokens share what the model learns; they differ in what they remember of the past.

**MLP** (Bengio et al. 2003, "A Neural Probabilistic Language Model"). The last ``context``
tokens, embedded and concatenated, go through one tanh layer:

    x_t = [e(w_{t-context+1}); ...; e(w_t)]              (context * d_embed,)
    logits_t = b + W x_t + U tanh(d + H x_t)             W x_t: the optional "direct" connections

Like an n-gram model of order ``context + 1`` it sees a fixed window and nothing before it;
unlike it, it generalises across similar contexts.

**RNN** (Elman 1990; as a language model, Mikolov et al. 2010). One state vector carries the
whole past, updated token by token:

    h_t = tanh(W_ih e(w_t) + b_ih + W_hh h_{t-1} + b_hh)       logits_t = W_out h_t + b_out

In principle it sees every earlier token; in practice the gradient that reaches token t - k
is multiplied by k Jacobians ``diag(1 - h^2) W_hh`` and vanishes (or explodes) geometrically
in k (Bengio et al. 1994). **LSTM** (Hochreiter & Schmidhuber 1997, with the forget gate of
Gers et al. 2000) adds a cell state updated *additively*, through gates:

    i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of (W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
    c_t = f * c_{t-1} + i * g          h_t = o * tanh(c_t)

so while the forget gate f stays near 1 the gradient flows back along c almost undamped.
**GRU** (Cho et al. 2014) is a lighter gated variant. A Transformer sidesteps the chain: every
position reads every earlier one through one attention step.

:class:`RNNLanguageModel` runs ``torch.nn.RNN``/``LSTM``/``GRU`` (fused kernels, fast);
:class:`ElmanCell`, :class:`LSTMCell` and :func:`recurrent_scan` write the same recurrences
from the equations above, and the tests show them equal to ``torch.nn.RNNCell``/``LSTMCell``
and to ``torch.nn.RNN``/``LSTM`` with copied weights (``from_torch``).

Every model here has the interface of :mod:`llmlab.models`' Transformers: ``model(input_ids)``
maps (batch, seq) token ids to (batch, seq, vocab) logits, position t predicting token t + 1,
so all train with the same loss and batches. ``model.new_cache()`` holds what each one carries
between calls: the MLP its last ``context - 1`` tokens (:class:`WindowState`, its Markov
state), an RNN its hidden vectors (:class:`RNNState`, constant size), where a Transformer keeps
a growing KV cache; so :func:`llmlab.inference.generation.generate` runs all of them.

Two measurements compare them on any of these models (and the course's GPT):
:func:`loss_by_position` (does the loss keep falling as more context is read?) and
:func:`gradient_by_distance` (how much does the last prediction's loss depend on the token k
steps back?).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.validate import require_int, require_positive_int, require_real, require_token_ids

__all__ = [
    "MLPLMConfig",
    "MLPLanguageModel",
    "RNNLMConfig",
    "RNNLanguageModel",
    "WindowState",
    "RNNState",
    "ElmanCell",
    "LSTMCell",
    "recurrent_scan",
    "loss_by_position",
    "gradient_by_distance",
]

CELLS = ("rnn", "lstm", "gru")


def _require_dropout(value) -> float:
    value = require_real(value, "dropout")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"dropout: expected a float in [0, 1), got {value!r}")
    return value


def _require_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# The MLP language model (Bengio et al. 2003)


@dataclass
class MLPLMConfig:
    """Bengio et al.'s MLP language model: a window of ``context`` tokens, one tanh layer.

    vocab_size: tokens predicted. context: how many tokens each prediction reads (the current
    one and ``context - 1`` before it; an n-gram of order ``context + 1``). d_embed: size of a
    token's vector. d_hidden: width of the tanh layer. direct: add Bengio's direct connections
    (a linear map from the concatenated embeddings straight to the logits). dropout: on the
    concatenated embeddings and the hidden layer, in training.
    """

    vocab_size: int
    context: int
    d_embed: int
    d_hidden: int
    direct: bool = False
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "context", "d_embed", "d_hidden"):
            setattr(self, name, require_positive_int(getattr(self, name), name))
        _require_bool(self.direct, "direct")
        self.dropout = _require_dropout(self.dropout)


class WindowState:
    """The MLP's state between calls: its last ``context - 1`` tokens, (batch, <= context - 1).

    Fewer than ``context - 1`` tokens means the text started there, so the model reads its
    start-of-text vector in the missing slots, as in a forward pass over the whole text.
    """

    def __init__(self, context: int):
        self.context = require_positive_int(context, "context")
        self.tokens: torch.Tensor | None = None
        self.length = 0  # tokens seen so far (all of them, not only those kept)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (beam search)."""
        if self.tokens is not None:
            self.tokens = self.tokens.index_select(0, index.to(self.tokens.device))


class MLPLanguageModel(nn.Module):
    """The MLP language model of Bengio et al. (2003); see the module docstring for the math.

    ``forward(input_ids)``: (batch, seq) -> logits (batch, seq, vocab), position t predicting
    token t + 1 from tokens t - context + 1 .. t. Where the window reaches before the start of
    ``input_ids`` (the first ``context - 1`` positions), its missing slots hold a learned
    start-of-text vector (``start``, the same in every slot), as the n-gram model pads with
    ``<s>``: position 0 is predicted from "start of text" and token 0, and no token id is
    reserved for padding. So ``input_ids`` should begin where a text (or a training window)
    begins, like any model's.
    """

    def __init__(self, config: MLPLMConfig):
        if not isinstance(config, MLPLMConfig):
            raise TypeError(f"config: expected an MLPLMConfig, got {type(config).__name__}")
        super().__init__()
        self.config = config
        c = config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_embed)
        self.start = nn.Parameter(torch.randn(c.d_embed))  # the slots before the text
        self.dropout = nn.Dropout(c.dropout)
        self.hidden = nn.Linear(c.context * c.d_embed, c.d_hidden)  # H, d
        self.lm_head = nn.Linear(c.d_hidden, c.vocab_size)  # U, b
        self.direct = (
            nn.Linear(c.context * c.d_embed, c.vocab_size, bias=False) if c.direct else None
        )  # W
        if self.direct is not None:
            nn.init.zeros_(self.direct.weight)  # start as the plain MLP; learn the shortcut

    def new_cache(self) -> WindowState:
        """An empty :class:`WindowState` for ``forward(..., cache=...)`` (generation)."""
        return WindowState(self.config.context)

    def forward(self, input_ids: torch.Tensor, cache: WindowState | None = None) -> torch.Tensor:
        """input_ids: (batch, seq) token ids -> logits (batch, seq, vocab_size).

        With ``cache``, ``input_ids`` continue the tokens it holds, and it keeps the last
        ``context - 1`` tokens for the next call.
        """
        require_token_ids(input_ids, "input_ids", self.config.vocab_size, min_seq=1)
        if cache is not None and not isinstance(cache, WindowState):
            raise TypeError(f"cache: expected a WindowState or None, got {type(cache).__name__}")
        if cache is None:
            return self._logits(input_ids)
        seq = input_ids.shape[1]
        ids = input_ids if cache.tokens is None else torch.cat([cache.tokens, input_ids], dim=1)
        logits = self._logits(ids)[:, -seq:]
        cache.tokens = ids[:, max(ids.shape[1] - (self.config.context - 1), 0) :]
        cache.length += seq
        return logits

    def _logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        k = self.config.context
        e = self.embed_tokens(input_ids)  # (batch, seq, d_embed)
        batch, seq, d = e.shape
        pad = self.start.to(e.dtype).expand(batch, k - 1, d)
        padded = torch.cat([pad, e], dim=1)  # (batch, k - 1 + seq, d_embed)
        # Window t is padded[t : t + k]: tokens t - k + 1 .. t, oldest first.
        x = padded.unfold(1, k, 1).transpose(2, 3).reshape(batch, seq, k * d)
        x = self.dropout(x)
        logits = self.lm_head(self.dropout(torch.tanh(self.hidden(x))))
        if self.direct is not None:
            logits = logits + self.direct(x)
        return logits

    def num_parameters(self) -> int:
        """Distinct parameters, as ``sum(p.numel())``."""
        return sum(p.numel() for p in self.parameters())


# --------------------------------------------------------------------------------------------
# Recurrent cells from their equations


class ElmanCell(nn.Module):
    """The Elman (vanilla) RNN cell: h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh).

    x: (batch, input_size), h: (batch, hidden_size) -> h' (batch, hidden_size). Parameters
    have ``torch.nn.RNNCell``'s names, shapes and initialisation (uniform in +-1/sqrt(hidden)),
    so its state dict loads into ours and the outputs are equal (tested).
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size = require_positive_int(input_size, "input_size")
        self.hidden_size = require_positive_int(hidden_size, "hidden_size")
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(hidden_size))
        _uniform_init(self)

    def initial_state(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        """h_0 = 0: (batch, hidden_size), on ``like``'s device and dtype."""
        return like.new_zeros(batch, self.hidden_size)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ self.weight_ih.T + self.bias_ih + h @ self.weight_hh.T + self.bias_hh)

    @classmethod
    def from_torch(cls, module: nn.RNNCell | nn.RNN, layer: int = 0) -> ElmanCell:
        """Our cell with the weights of a tanh ``nn.RNNCell``, or of layer ``layer`` of an ``nn.RNN``."""
        return _from_torch(cls, module, layer, nn.RNNCell, nn.RNN)


class LSTMCell(nn.Module):
    """The LSTM cell (with forget gate): four gates from one matrix product, then c and h.

        [i, f, g, o] = x W_ih^T + b_ih + h W_hh^T + b_hh          (batch, 4 * hidden_size)
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h' = sigmoid(o) * tanh(c')

    x: (batch, input_size), state (h, c): two (batch, hidden_size) -> (h', c'). The gates are
    stacked in ``torch.nn.LSTMCell``'s order (input, forget, cell, output), with its names,
    shapes and initialisation, so its state dict loads into ours (tested equal).
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size = require_positive_int(input_size, "input_size")
        self.hidden_size = require_positive_int(hidden_size, "hidden_size")
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        _uniform_init(self)

    def initial_state(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_0, c_0) = (0, 0), each (batch, hidden_size)."""
        zeros = like.new_zeros(batch, self.hidden_size)
        return zeros, zeros

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        gates = x @ self.weight_ih.T + self.bias_ih + h @ self.weight_hh.T + self.bias_hh
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c

    @classmethod
    def from_torch(cls, module: nn.LSTMCell | nn.LSTM, layer: int = 0) -> LSTMCell:
        """Our cell with the weights of an ``nn.LSTMCell``, or of layer ``layer`` of an ``nn.LSTM``."""
        return _from_torch(cls, module, layer, nn.LSTMCell, nn.LSTM)


def recurrent_scan(cell: nn.Module, x: torch.Tensor, state=None):
    """Run ``cell`` over the sequence ``x``: (batch, seq, input_size) -> (outputs, final state).

    outputs: (batch, seq, hidden_size), the h of every step; the final state is what the cell
    returns at the last step (h, or (h, c) for an LSTM). ``state`` defaults to the cell's
    ``initial_state`` (zeros). One Python step per token: the sequential dependency that makes
    an RNN slow to train on long texts, where attention processes all positions at once.
    Equal to ``torch.nn.RNN``/``LSTM`` (one layer, ``batch_first=True``) with the same weights.
    """
    if state is None:
        state = cell.initial_state(x.shape[0], x)
    outputs = []
    for t in range(x.shape[1]):
        state = cell(x[:, t], state)
        outputs.append(state[0] if isinstance(state, tuple) else state)
    return torch.stack(outputs, dim=1), state


def _uniform_init(cell: nn.Module) -> None:
    bound = 1.0 / math.sqrt(cell.hidden_size)  # torch's RNN init
    for p in cell.parameters():
        nn.init.uniform_(p, -bound, bound)


def _from_torch(cls, module, layer, cell_type, stack_type):
    if isinstance(module, cell_type):
        suffix = ""
    elif isinstance(module, stack_type):
        layer = require_int(layer, "layer", 0)
        if layer >= module.num_layers or module.bidirectional or module.proj_size > 0:
            raise ValueError(
                f"module: expected a unidirectional {stack_type.__name__} without projections "
                f"and layer < num_layers={module.num_layers}, got layer {layer}"
            )
        suffix = f"_l{layer}"
    else:
        raise TypeError(
            f"module: expected an nn.{cell_type.__name__} or nn.{stack_type.__name__}, "
            f"got {type(module).__name__}"
        )
    if getattr(module, "nonlinearity", "tanh") != "tanh" or not module.bias:
        raise ValueError("module: expected a tanh cell with biases (what these cells compute)")
    weight_ih = getattr(module, "weight_ih" + suffix)
    cell = cls(weight_ih.shape[1], module.hidden_size).to(weight_ih.device, weight_ih.dtype)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(module, name + suffix))
    return cell


# --------------------------------------------------------------------------------------------
# The recurrent language model


@dataclass
class RNNLMConfig:
    """A recurrent language model: embedding -> ``n_layers`` recurrent layers -> output layer.

    cell: ``"rnn"`` (Elman, tanh), ``"lstm"`` or ``"gru"``. d_embed: size of a token's
    vector. d_hidden: size of the state h (and of the LSTM's cell c). dropout: on the
    embeddings, between recurrent layers and before the output layer (Zaremba et al. 2014).
    tie_embeddings: the output layer reuses the embedding matrix (Press & Wolf 2017; Inan et
    al. 2017), which needs ``d_hidden == d_embed``. forget_bias: the LSTM's initial
    forget-gate bias (its other biases keep torch's init). Positive values start every cell
    as a memory that keeps its content (sigmoid(1) = 0.73 a step, sigmoid(3) = 0.95), which
    lets gradients reach far back from the first step (Gers et al. 2000; Jozefowicz et al.
    2015 recommend 1); ignored by the other cells.
    """

    vocab_size: int
    d_embed: int
    d_hidden: int
    n_layers: int = 1
    cell: str = "lstm"
    dropout: float = 0.0
    tie_embeddings: bool = False
    forget_bias: float = 1.0

    def __post_init__(self):
        for name in ("vocab_size", "d_embed", "d_hidden", "n_layers"):
            setattr(self, name, require_positive_int(getattr(self, name), name))
        self.forget_bias = require_real(self.forget_bias, "forget_bias")
        if self.cell not in CELLS:
            raise ValueError(f"cell: expected one of {CELLS}, got {self.cell!r}")
        self.dropout = _require_dropout(self.dropout)
        _require_bool(self.tie_embeddings, "tie_embeddings")
        if self.tie_embeddings and self.d_hidden != self.d_embed:
            raise ValueError(
                f"tie_embeddings: expected d_hidden == d_embed to share the matrix, got "
                f"d_hidden={self.d_hidden}, d_embed={self.d_embed}"
            )


class RNNState:
    """An RNN's state between calls: h (n_layers, batch, d_hidden), and c for an LSTM.

    Constant size whatever the length of the text read so far (a Transformer's KV cache grows
    with it). ``h`` is None before the first call (zeros). ``detach()`` cuts the graph, for
    truncated backpropagation through time across batches.
    """

    def __init__(self, h: torch.Tensor | None = None, c: torch.Tensor | None = None):
        self.h, self.c = h, c
        self.length = 0  # tokens read so far

    def detach(self) -> RNNState:
        """Stop gradients at the current state (in place; returns self)."""
        self.h = None if self.h is None else self.h.detach()
        self.c = None if self.c is None else self.c.detach()
        return self

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (beam search)."""
        if self.h is not None:
            self.h = self.h.index_select(1, index.to(self.h.device))
        if self.c is not None:
            self.c = self.c.index_select(1, index.to(self.c.device))


class RNNLanguageModel(nn.Module):
    """Embedding -> ``torch.nn.RNN``/``LSTM``/``GRU`` -> linear output; see the module docstring.

    ``forward(input_ids, cache=None)``: (batch, seq) -> logits (batch, seq, vocab). With a
    ``cache`` (an :class:`RNNState`, e.g. ``model.new_cache()``) the recurrence starts from its
    state and leaves the final one there: feed a prompt, then one token a call, each call
    O(1) in the length of the text. ``model.rnn`` is the torch module; :meth:`ElmanCell.from_torch`
    and :meth:`LSTMCell.from_torch` rebuild any layer of it from the equations.
    """

    def __init__(self, config: RNNLMConfig):
        if not isinstance(config, RNNLMConfig):
            raise TypeError(f"config: expected an RNNLMConfig, got {type(config).__name__}")
        super().__init__()
        self.config = c = config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_embed)
        nn.init.uniform_(self.embed_tokens.weight, -0.1, 0.1)  # Zaremba et al.'s scale
        self.dropout = nn.Dropout(c.dropout)
        kind = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[c.cell]
        self.rnn = kind(
            c.d_embed, c.d_hidden, c.n_layers, batch_first=True,
            dropout=c.dropout if c.n_layers > 1 else 0.0,
        )  # fmt: skip
        if c.cell == "lstm":
            with torch.no_grad():  # gates are stacked (input, forget, cell, output)
                forget = slice(c.d_hidden, 2 * c.d_hidden)
                for layer in range(c.n_layers):
                    getattr(self.rnn, f"bias_ih_l{layer}")[forget] = c.forget_bias
                    getattr(self.rnn, f"bias_hh_l{layer}")[forget] = 0.0
        self.lm_head = nn.Linear(c.d_hidden, c.vocab_size)
        nn.init.zeros_(self.lm_head.bias)
        if c.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def new_cache(self) -> RNNState:
        """An empty :class:`RNNState` (zeros on first use) for ``forward(..., cache=...)``."""
        return RNNState()

    def forward(self, input_ids: torch.Tensor, cache: RNNState | None = None) -> torch.Tensor:
        """input_ids: (batch, seq) token ids -> logits (batch, seq, vocab_size)."""
        require_token_ids(input_ids, "input_ids", self.config.vocab_size, min_seq=1)
        if cache is not None and not isinstance(cache, RNNState):
            raise TypeError(f"cache: expected an RNNState or None, got {type(cache).__name__}")
        x = self.dropout(self.embed_tokens(input_ids))  # (batch, seq, d_embed)
        state = None
        if cache is not None and cache.h is not None:
            state = (cache.h, cache.c) if self.config.cell == "lstm" else cache.h
        out, state = self.rnn(x, state)  # out: (batch, seq, d_hidden), the top layer's h
        if cache is not None:
            cache.h, cache.c = state if self.config.cell == "lstm" else (state, None)
            cache.length += input_ids.shape[1]
        return self.lm_head(self.dropout(out))

    def num_parameters(self) -> int:
        """Distinct parameters (a tied embedding counts once), as ``sum(p.numel())``."""
        return sum(p.numel() for p in self.parameters())


# --------------------------------------------------------------------------------------------
# Measurements: how far back does a model look?


def _as_token_ids(tokens, min_seq: int) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor):
        tokens = torch.as_tensor(tokens)
    require_token_ids(tokens, "tokens", min_seq=min_seq)
    return tokens.long()


def _logits_of(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def _token_embedding(model: nn.Module) -> nn.Module:
    embed = getattr(model, "embed_tokens", None)
    if embed is None and hasattr(model, "get_input_embeddings"):
        embed = model.get_input_embeddings()  # transformers models
    if not isinstance(embed, nn.Module):
        raise TypeError(
            f"model: expected a model with an ``embed_tokens`` module (llmlab's) or "
            f"``get_input_embeddings()`` (transformers'), got {type(model).__name__}; "
            "pass the token embedding as ``embedding=``"
        )
    return embed


class _EvalMode:
    """Eval mode (no dropout) inside, the model's own mode restored after."""

    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


@torch.no_grad()
def loss_by_position(model: nn.Module, tokens, batch_size: int = 32) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) at each position: (seq - 1,) float64.

    tokens: (batch, seq) windows of token ids; the model reads ``tokens[:, :-1]`` and entry t
    is the mean over the batch of -log p(tokens[:, t + 1] | tokens[:, :t + 1]), the loss after
    reading t + 1 tokens. A model that uses more context has a curve that keeps falling; an
    MLP's (or n-gram's) is flat after its window. Run in eval mode, ``batch_size`` windows a
    forward pass.
    """
    tokens = _as_token_ids(tokens, min_seq=2)
    batch_size = require_positive_int(batch_size, "batch_size")
    device = next(model.parameters()).device
    total = torch.zeros(tokens.shape[1] - 1, dtype=torch.float64, device=device)
    with _EvalMode(model):
        for chunk in tokens.split(batch_size):
            chunk = chunk.to(device)
            logits = _logits_of(model(chunk[:, :-1])).float()
            nll = F.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none")
            total += nll.sum(0, dtype=torch.float64)
    return (total / tokens.shape[0]).cpu()


def gradient_by_distance(
    model: nn.Module, tokens, embedding: nn.Module | None = None
) -> torch.Tensor:
    """How strongly the last prediction's loss depends on each earlier token: (seq - 1,) float64.

    tokens: (batch, seq) windows of token ids. The model reads ``tokens[:, :-1]`` and the loss
    is the cross-entropy of its last prediction, of ``tokens[:, -1]``. Entry k is the norm of
    d(loss) / d(embedding of the input token k steps before the last input), averaged over the
    batch: k = 0 is the last input token, k = seq - 2 the first. An MLP with context c gives
    exactly 0 for k >= c; an RNN's gradient decays about geometrically with k (vanishing
    gradients); an LSTM's more slowly; attention reaches every k in one step.

    The embedding's output is captured with a forward hook on ``embedding`` (default: the
    model's ``embed_tokens``, or ``get_input_embeddings()`` for a transformers model), so any
    model that looks its tokens up in one embedding module works, positions added after it
    or not. Run in eval mode (no dropout) and with cuDNN off (its RNN backward refuses eval
    mode); gradients of the parameters are neither computed nor touched.
    """
    tokens = _as_token_ids(tokens, min_seq=2)
    embed = _token_embedding(model) if embedding is None else embedding
    if not isinstance(embed, nn.Module):
        raise TypeError(f"embedding: expected an nn.Module, got {type(embed).__name__}")
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    captured = []

    def hook(module, args, output):
        output = output.detach().requires_grad_(True)  # a leaf: d(loss)/d(it) is what we want
        captured.append(output)
        return output

    handle = embed.register_forward_hook(hook)
    try:
        with _EvalMode(model), torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
            logits = _logits_of(model(tokens[:, :-1]))[:, -1].float()
            # Summed over the batch: each row's gradient then is that row's own loss's.
            loss = F.cross_entropy(logits, tokens[:, -1], reduction="sum")
            if len(captured) != 1:
                raise ValueError(
                    f"embedding: expected one call per forward pass, got {len(captured)}"
                )
            (grad,) = torch.autograd.grad(loss, captured[0], allow_unused=True)
    finally:
        handle.remove()
    if grad is None:
        grad = torch.zeros_like(captured[0])
    norms = grad.double().norm(dim=-1).mean(0)  # (seq - 1,), by input position
    return norms.flip(0).cpu()  # by distance from the last input
