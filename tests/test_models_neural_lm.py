"""llmlab.models.neural_lm: the MLP and RNN language models, cells from scratch, measurements."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmlab.data.toy import copy_batch
from llmlab.inference.generation import beam_search, generate
from llmlab.models import (
    GPT,
    ElmanCell,
    GPTConfig,
    LSTMCell,
    MLPLanguageModel,
    MLPLMConfig,
    RNNLanguageModel,
    RNNLMConfig,
    RNNState,
    WindowState,
    gradient_by_distance,
    loss_by_position,
    recurrent_scan,
)
from llmlab.training import lm_loss

VOCAB = 23
CONTEXT = 4
SEQ = 12


def mlp(direct=False, seed=0):
    torch.manual_seed(seed)
    return MLPLanguageModel(MLPLMConfig(VOCAB, CONTEXT, d_embed=8, d_hidden=16, direct=direct))


def rnn(cell="lstm", n_layers=1, tie=False, seed=0):
    torch.manual_seed(seed)
    d_hidden = 8 if tie else 12
    config = RNNLMConfig(VOCAB, 8, d_hidden, n_layers=n_layers, cell=cell, tie_embeddings=tie)
    return RNNLanguageModel(config)


MODELS = {
    "mlp": mlp,
    "mlp-direct": lambda: mlp(direct=True),
    "rnn": lambda: rnn("rnn"),
    "lstm": lambda: rnn("lstm"),
    "gru": lambda: rnn("gru"),
    "lstm-2-layers-tied": lambda: rnn("lstm", n_layers=2, tie=True),
}


def ids(batch=3, seq=SEQ, seed=0):
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def one_thread():
    """Tiny models on a shared CPU: one thread is faster than two that wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# Shapes, configs, errors


@pytest.mark.parametrize("name", MODELS)
def test_logits_shape_and_every_parameter_gets_a_gradient(name):
    model = MODELS[name]()
    x = ids()
    logits = model(x)
    assert logits.shape == (3, SEQ, VOCAB) and logits.dtype == torch.float32
    lm_loss(logits[:, :-1], x[:, 1:]).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_parameter_counts_by_formula():
    m = mlp(direct=True)
    k, d, h, v = CONTEXT, 8, 16, VOCAB
    assert m.num_parameters() == v * d + d + (k * d * h + h) + (h * v + v) + k * d * v
    r = rnn("lstm", n_layers=2, tie=True)
    d = 8
    per_layer = 4 * (d * d + d * d + 2 * d)
    assert r.num_parameters() == v * d + 2 * per_layer + v  # tied head: its bias only
    assert r.lm_head.weight is r.embed_tokens.weight


def test_lstm_forget_bias_is_set_in_every_layer():
    model = RNNLanguageModel(RNNLMConfig(VOCAB, 8, 12, n_layers=2, forget_bias=3.0))
    for layer in range(2):
        total = getattr(model.rnn, f"bias_ih_l{layer}") + getattr(model.rnn, f"bias_hh_l{layer}")
        assert torch.equal(total[12:24], torch.full((12,), 3.0))


def test_configs_accept_numpy_numbers_and_store_python_ones():
    config = MLPLMConfig(
        np.int64(VOCAB), np.int32(3), np.int64(4), np.int64(5), dropout=np.float32(0.1)
    )
    assert type(config.context) is int and type(config.dropout) is float
    config = RNNLMConfig(np.int64(VOCAB), np.int64(4), np.int64(4), forget_bias=np.float64(2))
    assert type(config.d_hidden) is int and type(config.forget_bias) is float


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda: MLPLMConfig(VOCAB, 0, 8, 8), ValueError, ["context", "positive int", "0"]),
        (lambda: MLPLMConfig(VOCAB, 2.0, 8, 8), TypeError, ["context", "int", "float"]),
        (lambda: MLPLMConfig(VOCAB, 2, 8, 8, direct=1), TypeError, ["direct", "bool", "int"]),
        (lambda: MLPLMConfig(VOCAB, 2, 8, 8, dropout=1.0), ValueError, ["dropout", "[0, 1)"]),
        (lambda: RNNLMConfig(VOCAB, 8, 8, cell="transformer"), ValueError, ["cell", "lstm", "transformer"]),
        (lambda: RNNLMConfig(VOCAB, 8, 8, n_layers=0), ValueError, ["n_layers", "positive"]),
        (lambda: RNNLMConfig(VOCAB, 8, 16, tie_embeddings=True), ValueError,
         ["tie_embeddings", "d_hidden == d_embed", "16", "8"]),
        (lambda: RNNLMConfig(VOCAB, 8, 8, forget_bias="1"), TypeError, ["forget_bias", "number"]),
        (lambda: MLPLanguageModel(RNNLMConfig(VOCAB, 8, 8)), TypeError, ["config", "MLPLMConfig", "RNNLMConfig"]),
        (lambda: RNNLanguageModel(MLPLMConfig(VOCAB, 2, 8, 8)), TypeError, ["config", "RNNLMConfig"]),
    ],
)  # fmt: skip
def test_config_errors_name_argument_expected_and_received(make, error, words):
    with pytest.raises(error) as info:
        make()
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("name", ["mlp", "lstm"])
def test_input_errors(name):
    model = MODELS[name]()
    with pytest.raises(ValueError, match=r"input_ids: expected 2 dims.*input_ids\[None\]"):
        model(ids()[0])
    with pytest.raises(ValueError, match=rf"input_ids: expected ids in \[0, {VOCAB}\)"):
        model(ids() + VOCAB)
    with pytest.raises(TypeError, match="input_ids: expected token ids of dtype int64"):
        model(ids().float())
    with pytest.raises(TypeError, match="cache: expected"):
        model(ids(), cache=RNNState() if name == "mlp" else WindowState(2))


# --------------------------------------------------------------------------------------------
# The cells, written from their equations, equal torch's


def test_elman_cell_equals_torch_rnn_cell():
    torch.manual_seed(0)
    theirs = nn.RNNCell(5, 7)
    ours = ElmanCell(5, 7)
    ours.load_state_dict(theirs.state_dict())  # same names and shapes
    x, h = torch.randn(4, 5), torch.randn(4, 7)
    torch.testing.assert_close(ours(x, h), theirs(x, h))
    torch.testing.assert_close(ElmanCell.from_torch(theirs)(x, h), theirs(x, h))


def test_lstm_cell_equals_torch_lstm_cell():
    torch.manual_seed(0)
    theirs = nn.LSTMCell(5, 7)
    ours = LSTMCell(5, 7)
    ours.load_state_dict(theirs.state_dict())
    x, h, c = torch.randn(4, 5), torch.randn(4, 7), torch.randn(4, 7)
    for a, b in zip(ours(x, (h, c)), theirs(x, (h, c)), strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(LSTMCell.from_torch(theirs)(x, (h, c)), theirs(x, (h, c)), strict=True):
        torch.testing.assert_close(a, b)


def test_cells_initialise_like_torch():
    for cell in (ElmanCell(5, 16), LSTMCell(5, 16)):
        for p in cell.parameters():
            assert p.abs().max() <= 1 / math.sqrt(16)


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_recurrent_scan_equals_torch_two_layer_stack(kind):
    torch.manual_seed(0)
    module_type, cell_type = (nn.RNN, ElmanCell) if kind == "rnn" else (nn.LSTM, LSTMCell)
    theirs = module_type(5, 7, num_layers=2, batch_first=True)
    x = torch.randn(3, 9, 5, requires_grad=True)
    out, state = theirs(x)
    # Layer by layer: layer 1 reads layer 0's outputs.
    h, finals = x, []
    for layer in range(2):
        h, final = recurrent_scan(cell_type.from_torch(theirs, layer), h)
        finals.append(final)
    torch.testing.assert_close(h, out)
    if kind == "rnn":
        torch.testing.assert_close(torch.stack(finals), state)
    else:
        torch.testing.assert_close(torch.stack([f[0] for f in finals]), state[0])
        torch.testing.assert_close(torch.stack([f[1] for f in finals]), state[1])
    # Backpropagation through time agrees too.
    (grad_theirs,) = torch.autograd.grad(out.square().sum(), x)
    (grad_ours,) = torch.autograd.grad(h.square().sum(), x)
    torch.testing.assert_close(grad_ours, grad_theirs)


def test_recurrent_scan_continues_from_a_state():
    torch.manual_seed(0)
    cell = LSTMCell(5, 7)
    x = torch.randn(2, 10, 5)
    whole, final = recurrent_scan(cell, x)
    first, state = recurrent_scan(cell, x[:, :4])
    second, final2 = recurrent_scan(cell, x[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole)
    torch.testing.assert_close(final2[1], final[1])


def test_the_model_s_lstm_rebuilt_from_the_equations():
    model = rnn("lstm")
    x = ids()
    hidden, _ = recurrent_scan(LSTMCell.from_torch(model.rnn), model.embed_tokens(x))
    torch.testing.assert_close(model.lm_head(hidden), model(x))


def test_from_torch_errors():
    with pytest.raises(TypeError, match="module: expected an nn.RNNCell or nn.RNN, got LSTM"):
        ElmanCell.from_torch(nn.LSTM(3, 4))
    with pytest.raises(ValueError, match="layer < num_layers=1, got layer 1"):
        LSTMCell.from_torch(nn.LSTM(3, 4), layer=1)
    with pytest.raises(ValueError, match="tanh cell with biases"):
        ElmanCell.from_torch(nn.RNNCell(3, 4, nonlinearity="relu"))


# --------------------------------------------------------------------------------------------
# What each model can see


@pytest.mark.parametrize("name", MODELS)
def test_causal_changing_token_t_changes_no_logit_before_t(name):
    model = MODELS[name]().eval()
    x = ids()
    t = 6
    y = x.clone()
    y[:, t] = (y[:, t] + 1) % VOCAB
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=0)
    assert (a[:, t] - b[:, t]).abs().max() > 1e-4


@pytest.mark.parametrize("direct", [False, True])
def test_mlp_reads_exactly_context_tokens(direct):
    model = mlp(direct=direct).eval()
    x = ids()
    t = 9
    base = model(x)[:, t]
    for back in range(CONTEXT + 3):
        y = x.clone()
        y[:, t - back] = (y[:, t - back] + 1) % VOCAB
        changed = (model(y)[:, t] - base).abs().max().item()
        if back < CONTEXT:
            assert changed > 1e-4, back
        else:
            assert changed == 0.0, back


def test_mlp_pads_the_start_with_its_start_vector():
    model = mlp().eval()
    x = ids(seq=1)
    k, d = CONTEXT, model.config.d_embed
    window = torch.cat([model.start.expand(k - 1, d), model.embed_tokens(x[0])]).flatten()
    expected = model.lm_head(torch.tanh(model.hidden(window)))
    torch.testing.assert_close(model(x)[0, 0], expected)


def test_rnn_sees_the_first_token_at_the_last_position():
    model = rnn("rnn").eval()
    x = ids(seq=30)
    y = x.clone()
    y[:, 0] = (y[:, 0] + 1) % VOCAB
    assert (model(x)[:, -1] - model(y)[:, -1]).abs().max() > 0


# --------------------------------------------------------------------------------------------
# State between calls: step-by-step equals the whole text, and generate() runs them


@pytest.mark.parametrize("name", MODELS)
def test_cache_one_token_a_call_equals_the_whole_text(name):
    model = MODELS[name]().eval()
    x = ids()
    whole = model(x)
    cache = model.new_cache()
    parts = [model(x[:, :2], cache=cache)]  # a prompt shorter than the MLP's window
    parts += [model(x[:, t : t + 1], cache=cache) for t in range(2, SEQ)]
    torch.testing.assert_close(torch.cat(parts, 1), whole)
    assert cache.length == SEQ


def test_rnn_state_in_and_out():
    model = rnn("lstm", n_layers=2).eval()
    x = ids()
    state = model.new_cache()
    model(x[:, :5], cache=state)
    assert state.h.shape == state.c.shape == (2, 3, 12)
    h, c = state.h.clone(), state.c.clone()
    later = model(x[:, 5:], cache=RNNState(h, c))  # a state passed in by hand
    torch.testing.assert_close(later, model(x)[:, 5:])
    assert not state.detach().h.requires_grad


@pytest.mark.parametrize("name", ["mlp", "gru"])
def test_generate_and_beam_search_run_the_models(name):
    model = MODELS[name]().eval()
    prompt = ids(batch=2, seq=3)
    cached = generate(model, prompt, 8)
    assert torch.equal(cached, generate(model, prompt, 8, use_cache=False))
    out = beam_search(model, prompt[:1], num_beams=3, max_new_tokens=5)
    assert out.new_ids.shape == (1, 5)


# --------------------------------------------------------------------------------------------
# Measurements


def test_loss_by_position_averages_to_the_lm_loss_and_keeps_the_mode():
    model = rnn("gru").train()
    x = ids(batch=5, seq=SEQ + 1)
    curve = loss_by_position(model, x, batch_size=2)
    assert curve.shape == (SEQ,) and curve.dtype == torch.float64
    assert model.training
    with torch.no_grad():
        expected = lm_loss(model.eval()(x[:, :-1]), x[:, 1:])
    assert curve.mean().item() == pytest.approx(expected.item(), rel=1e-5)
    numpy_curve = loss_by_position(model, x.numpy())
    torch.testing.assert_close(numpy_curve, curve)


@pytest.mark.parametrize("direct", [False, True])
def test_gradient_by_distance_is_zero_beyond_the_mlp_context(direct):
    model = mlp(direct=direct)
    grads = gradient_by_distance(model, ids(batch=4, seq=SEQ + 1))
    assert grads.shape == (SEQ,)
    assert (grads[:CONTEXT] > 1e-6).all()
    assert (grads[CONTEXT:] == 0).all()
    assert all(p.grad is None for p in model.parameters())  # parameters untouched


def test_gradient_by_distance_equals_autograd_by_hand():
    model = rnn("rnn").eval()
    x = ids(batch=2, seq=SEQ + 1)
    e = model.embed_tokens(x[:, :-1]).detach().requires_grad_(True)
    out, _ = model.rnn(e)
    loss = F.cross_entropy(model.lm_head(out[:, -1]), x[:, -1], reduction="sum")
    (grad,) = torch.autograd.grad(loss, e)
    expected = grad.double().norm(dim=-1).mean(0).flip(0)
    torch.testing.assert_close(gradient_by_distance(model, x), expected)


@pytest.mark.parametrize("name", ["rnn", "lstm", "gru", "gpt"])
def test_gradient_by_distance_reaches_every_position(name):
    if name == "gpt":
        torch.manual_seed(0)
        model = GPT(
            GPTConfig(vocab_size=VOCAB, max_seq=32, d_model=16, n_layers=2, n_heads=2, dropout=0.1)
        )
    else:
        model = MODELS[name]()
    grads = gradient_by_distance(model.train(), ids(batch=4, seq=SEQ + 1))
    assert grads.shape == (SEQ,)
    assert (grads > 0).all()
    assert model.training  # the mode is restored (it ran in eval mode)


def test_gradient_by_distance_errors():
    with pytest.raises(TypeError, match="model: expected a model with an ``embed_tokens``"):
        gradient_by_distance(nn.Sequential(nn.Embedding(VOCAB, 4)), ids())
    with pytest.raises(ValueError, match=r"tokens: expected seq >= 2"):
        gradient_by_distance(mlp(), ids(seq=1))
    with pytest.raises(ValueError, match="tokens: expected 2 dims"):
        loss_by_position(mlp(), ids()[0])


def test_gradient_by_distance_takes_an_explicit_embedding():
    model = nn.Sequential(nn.Embedding(VOCAB, 4), nn.Linear(4, VOCAB))  # no context at all
    grads = gradient_by_distance(model, ids(seq=6), embedding=model[0])
    assert grads[0] > 0 and (grads[1:] == 0).all()


# --------------------------------------------------------------------------------------------
# A long-range dependency: the LSTM carries a token across 20 noise tokens


def test_lstm_learns_a_dependency_21_tokens_back(one_thread):
    n_symbols = 4
    baseline = math.log(n_symbols)  # the best loss of any model that cannot see the first token
    torch.manual_seed(0)
    model = RNNLanguageModel(RNNLMConfig(13, d_embed=16, d_hidden=64, forget_bias=3.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    running = baseline
    for _ in range(600):  # seeds 0-7 get there in 120-300 steps (~0.01 s a step)
        x = copy_batch(generator, 64)
        loss = F.cross_entropy(model(x[:, :-1])[:, -1], x[:, -1])  # the copy is scored
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running = 0.9 * running + 0.1 * loss.item()
        if running < 0.3:
            break
    test = copy_batch(torch.Generator().manual_seed(1), 512)
    held_out = loss_by_position(model, test)[-1].item()
    assert held_out < 0.5 * baseline, (held_out, baseline)
    grads = gradient_by_distance(model, test[:64])
    assert grads[-1] > 0  # the symbol, 21 tokens before the query, still gets gradient
