"""Contract of llmlab.posttrain.domain: the held-out files stay out of training, a line counted
as completed is one greedy decoding completes, the loss is the model's cross-entropy, and
continued pretraining trains once, then loads the same model and history from the cache."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from llmlab.assets import tiny_smollm2
from llmlab.data.corpora import REFERENCE_FILE, Corpus
from llmlab.posttrain.domain import (
    CodeScore,
    domain_corpora,
    eval_windows,
    heldout_docstrings,
    line_spans,
    lora_cpt_model,
    newline_tokens,
    score_code,
    token_stream,
)

CODE = """def add(a, b):
    return a + b


class Box:
    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value
"""


@pytest.fixture(scope="module")
def tiny():
    return tiny_smollm2(seed=0)


def _corpus(n: int) -> Corpus:
    paths = [f"pkg/m{i}.py" for i in range(n - 1)] + [REFERENCE_FILE]
    return Corpus("toy", [f"x = {i}\n" for i in range(n)], paths)


# --------------------------------------------------------------------------------------------
# Files


def test_domain_corpora_holds_out_a_share_the_excluded_files_and_the_reference():
    code = _corpus(40)
    train, held = domain_corpora(code, exclude=["pkg/m3.py:f", "pkg/m5.py"], heldout=0.25, seed=1)
    assert held.n_documents == 10
    assert not set(train.sources) & set(held.sources)
    assert not {"pkg/m3.py", "pkg/m5.py", REFERENCE_FILE} & set(train.sources)
    assert set(train.sources) | set(held.sources) | {
        "pkg/m3.py",
        "pkg/m5.py",
        REFERENCE_FILE,
    } == set(code.sources)
    assert [train.documents[i] for i in range(3)] == [
        code.documents[code.sources.index(s)] for s in train.sources[:3]
    ]
    again = domain_corpora(code, exclude=["pkg/m3.py:f", "pkg/m5.py"], heldout=0.25, seed=1)
    assert again[0].sources == train.sources and again[1].sources == held.sources


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"code": ["x = 1"]}, TypeError, "code: expected a Corpus"),
        ({"heldout": 0}, ValueError, "heldout: expected a float share"),
        ({"heldout": 1.5}, ValueError, "heldout: expected a float share"),
        ({"exclude": "pkg/m1.py"}, TypeError, "exclude: expected an iterable"),
    ],
)
def test_domain_corpora_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        domain_corpora(**{"code": _corpus(10), **kwargs})


def test_heldout_docstrings_skips_training_files_and_repeated_first_lines():
    train = Corpus("t", ['def f():\n    """Return the value of x."""\n'], ["a.py"])
    held = Corpus("h", ["...", "..."], ["b.py", "c.py"])
    long = "\nand more words" * 6
    docstrings = Corpus(
        "d",
        ["Return the value of x." + long, "Open a file." + long, "Short.", "Trained on." + long],
        ["b.py:g", "c.py:h", "b.py:k", "a.py:f"],
    )
    assert heldout_docstrings(docstrings, held, train) == ["Open a file." + long]


# --------------------------------------------------------------------------------------------
# Tokens and lines


def test_token_stream_ends_each_document_with_eos(tiny):
    _, tokenizer = tiny
    ids = token_stream(tokenizer, ["x = 1", "y = 2"])
    first = tokenizer("x = 1", add_special_tokens=False)["input_ids"]
    second = tokenizer("y = 2", add_special_tokens=False)["input_ids"]
    assert ids.tolist() == [*first, tokenizer.eos_token_id, *second, tokenizer.eos_token_id]
    assert ids.dtype == torch.long
    with pytest.raises(TypeError, match="documents: expected a sequence of non-empty"):
        token_stream(tokenizer, "x = 1")
    with pytest.raises(ValueError, match="documents: expected at least one"):
        token_stream(tokenizer, [])


def test_newline_tokens_are_the_line_breaks(tiny):
    _, tokenizer = tiny
    is_newline = newline_tokens(tokenizer)
    assert is_newline.shape == (len(tokenizer),)
    ids = tokenizer(CODE, add_special_tokens=False)["input_ids"]
    texts = [tokenizer.decode([i]) for i in ids]
    assert [bool(is_newline[i]) for i in ids] == ["\n" in t for t in texts]
    assert sum("\n" in t for t in texts) >= CODE.count("\n") - 3  # blank lines may merge


def test_line_spans_are_the_complete_non_blank_lines():
    is_newline = torch.zeros(10, dtype=torch.bool)
    is_newline[0] = True
    ids = torch.tensor([5, 0, 6, 7, 0, 0, 8, 0, 9])
    assert line_spans(ids, is_newline) == [(2, 4), (6, 7)]
    assert line_spans(torch.tensor([5, 6]), is_newline) == []
    with pytest.raises(ValueError, match="ids: expected a 1-D tensor"):
        line_spans(ids[None], is_newline)


def test_lines_of_real_code_decode_to_its_lines(tiny):
    _, tokenizer = tiny
    ids = torch.tensor(tokenizer(CODE, add_special_tokens=False)["input_ids"])
    lines = [
        tokenizer.decode(ids[a : b + 1]).strip()
        for a, b in line_spans(ids, newline_tokens(tokenizer))
    ]
    assert lines == [line.strip() for line in CODE.splitlines()[1:] if line.strip()]


def test_eval_windows_are_spread_and_disjoint():
    tokens = torch.arange(100)
    windows = eval_windows(tokens, 4, 9)
    assert windows.shape == (4, 10)
    assert windows[0, 0] == 0 and windows[-1, -1] == 99  # from the start to the end
    assert len(set(windows.flatten().tolist())) == 40  # no token twice
    assert torch.equal(eval_windows(tokens, 1, 9), tokens[None, :10])
    with pytest.raises(ValueError, match="n: 11 windows of 10 tokens need 110"):
        eval_windows(tokens, 11, 9)
    with pytest.raises(ValueError, match="tokens: expected a 1-D tensor"):
        eval_windows(tokens[None], 2, 9)


class BigramOracle(torch.nn.Module):
    """Predicts table[previous token] with certainty: greedy decoding is easy to follow."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, use_cache=False):
        return SimpleNamespace(
            logits=F.one_hot(self.table[input_ids], len(self.table)).float() * 20
        )


def test_a_line_counts_as_exact_when_greedy_decoding_writes_it():
    vocab, newline = 6, 0
    is_newline = torch.zeros(vocab, dtype=torch.bool)
    is_newline[newline] = True
    table = torch.tensor([1, 2, 0, 4, 0, 3])  # 0 -> 1 -> 2 -> 0 (a line "1 2 \n"), 3 -> 4 -> 0
    model = BigramOracle(table)
    windows = torch.randint(0, vocab, (30, 12), generator=torch.Generator().manual_seed(0))
    windows[:10, 3:7] = torch.tensor([0, 1, 2, 0])  # some lines the oracle completes
    score = score_code(model, windows, is_newline, batch_size=7)
    exact = lines = 0
    for row in windows:
        for a, b in line_spans(row, is_newline):
            token, written = row[a - 1], []
            for _ in range(b - a + 1):  # greedy decoding from the true prefix
                token = table[token]
                written.append(int(token))
            lines += 1
            exact += written == row[a : b + 1].tolist()
    assert (score.lines, score.exact_lines) == (lines, exact)
    assert len(score.line_exact) == lines and sum(score.line_exact) == exact
    assert 10 <= exact < lines
    right = (table[windows[:, :-1]] == windows[:, 1:]).float().mean().item()
    assert score.token_accuracy == pytest.approx(right)
    assert score.tokens == windows[:, 1:].numel()


def test_score_code_loss_is_the_models_cross_entropy(tiny):
    model, tokenizer = tiny
    windows = torch.randint(0, len(tokenizer), (3, 9), generator=torch.Generator().manual_seed(1))
    score = score_code(model, windows, newline_tokens(tokenizer), batch_size=2)
    with torch.no_grad():
        logits = model(windows[:, :-1]).logits
    expected = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten()).item()
    assert score.loss == pytest.approx(expected, rel=1e-5)
    per_window = [F.cross_entropy(logits[i], windows[i, 1:]).item() for i in range(len(windows))]
    assert score.window_loss == pytest.approx(per_window, rel=1e-5)
    assert isinstance(score, CodeScore) and "lines completed exactly" in str(score)
    assert not model.training
    with pytest.raises(ValueError, match=r"windows: expected a \(n, seq \+ 1\) tensor"):
        score_code(model, windows[0], newline_tokens(tokenizer))


# --------------------------------------------------------------------------------------------
# Continued pretraining, cached


def test_lora_cpt_model_trains_once_then_loads_model_and_history(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    base, tokenizer = tiny
    tokens = token_stream(tokenizer, [CODE] * 4)
    calls = []

    def evaluate(model):
        calls.append(1)
        return 1.5

    settings = dict(name="test/cpt", steps=2, batch_size=2, seq_len=16, lr=1e-2, rank=2)
    first, history, trained = lora_cpt_model(
        base, tokens, evaluate=evaluate, eval_every=1, **settings
    )
    assert trained and len(history.loss) == 2 and history.eval_loss == [1.5, 1.5]
    assert (tmp_path / "results" / "test" / "cpt.safetensors").exists()
    second, saved, trained_again = lora_cpt_model(base, tokens, **settings)
    assert not trained_again and saved.loss == history.loss and saved.eval_step == [1, 2]
    ids = tokens[None, :20]
    with torch.no_grad():
        assert torch.equal(first(ids).logits, second(ids).logits)
        assert not torch.equal(first(ids).logits, base(ids).logits)
    assert type(second.model.layers[0].mlp.down_proj) is torch.nn.Linear  # merged
    with pytest.raises(ValueError, match="tokens: expected a 1-D tensor"):
        lora_cpt_model(base, tokens[None], **settings)
