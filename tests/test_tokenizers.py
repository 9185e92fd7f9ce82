"""llmlab.tokenization: byte-level BPE from scratch against the `tokenizers` library.

Parity with SmolLM2's own tokenizer (same ids), parity of our trainer with BpeTrainer (same
merges, same vocabulary, same ids), round trips on any Unicode, special tokens, streaming at
awkward chunk sizes, save/load, and the errors bad arguments raise.
"""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import tokenizers

from llmlab import assets
from llmlab.data import docstring_corpus
from llmlab.tokenization import (
    CHINESE_PROSE,
    EDGE_CASES,
    GPT2_PATTERN,
    BPETokenizer,
    TrainStats,
    byte_order,
    bytes_to_unicode,
    count_pretokens,
    mixed_text,
    pretokenize,
    tokenizers_merges,
    train_bpe,
    train_bpe_with_tokenizers,
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def smollm2_json():
    return assets.prepare("smollm2") / "tokenizer.json"


@pytest.fixture(scope="module")
def smol(smollm2_json):
    return BPETokenizer.from_tokenizer_json(smollm2_json)


@pytest.fixture(scope="module")
def smol_hf(smollm2_json):
    return tokenizers.Tokenizer.from_file(str(smollm2_json))


@pytest.fixture(scope="module")
def corpus():
    return docstring_corpus(max_bytes=150_000).documents


@pytest.fixture(scope="module")
def trained(corpus):
    return train_bpe(corpus, 600, SPECIALS)


# --------------------------------------------------------------------------------------------
# Bytes and pre-tokenization


def test_bytes_to_unicode_is_a_printable_bijection():
    mapping = bytes_to_unicode()
    assert sorted(mapping) == list(range(256))
    assert len(set(mapping.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in mapping.values())
    assert mapping[ord(" ")] == "Ġ" and mapping[ord("\n")] == "Ċ" and mapping[ord("a")] == "a"


def test_byte_order_is_smollm2s_id_order(smol):
    ids = [smol.vocab[bytes_to_unicode()[b]] for b in byte_order() if b not in smol.missing_bytes]
    assert ids == sorted(ids)


def test_pretokenize_gpt2_pieces():
    assert pretokenize("Hello  world's 2024!!") == ["Hello", " ", " world", "'s", " 2024", "!!"]
    assert pretokenize("a   \n\tb  c") == ["a", "   \n", "\t", "b", " ", " c"]


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_pretokenize_matches_the_byte_level_pre_tokenizer(name):
    text = EDGE_CASES[name]
    pieces = pretokenize(text)
    assert "".join(pieces) == text
    hf = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    to_chars = bytes_to_unicode()
    ours = ["".join(to_chars[b] for b in p.encode()) for p in pieces]
    assert ours == [p for p, _ in hf.pre_tokenize_str(text)]


# --------------------------------------------------------------------------------------------
# Parity with SmolLM2's tokenizer


def test_smollm2_loads_with_its_special_tokens(smol):
    assert smol.vocab_size == 49152 and len(smol.merges) == 48900
    assert len(smol.special_tokens) == 17
    assert {smol.special_tokens[t] for t in SPECIALS} == {0, 1, 2}
    assert len(smol.missing_bytes) == 21  # the vocabulary has 235 of the 256 bytes


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_smollm2_parity_on_edge_cases(smol, smol_hf, name):
    text = EDGE_CASES[name]
    assert smol.encode(text) == smol_hf.encode(text).ids


def test_smollm2_parity_on_mixed_text(smol, smol_hf):
    text = mixed_text(120_000, seed=3, special_tokens=SPECIALS)
    assert "\t" in text and "\r\n" in text and "<|im_start|>" in text
    assert any("\u4e00" <= c <= "\u9fa5" for c in text) and any(ord(c) > 0x1F000 for c in text)
    ids = smol.encode(text)
    assert ids == smol_hf.encode(text).ids
    assert smol.decode(ids) == text


def test_bytes_missing_from_the_vocabulary_are_dropped_like_tokenizers(smol, smol_hf):
    text = "a\x04b\x06\x13c\U00040000d"  # \x04 \x06 \x13 and the lead byte 0xF1 have no token
    assert smol.encode(text) == smol_hf.encode(text).ids
    assert smol.decode(smol.encode(text)) != text


def test_smollm2_decode_matches_on_cut_characters(smol, smol_hf):
    ids = smol.encode("🙂 ok")
    for end in range(len(ids) + 1):
        assert smol.decode(ids[:end]) == smol_hf.decode(ids[:end])
    with pytest.raises(UnicodeDecodeError):
        smol.decode(ids[:1], errors="strict")


# --------------------------------------------------------------------------------------------
# Round trips and special tokens


def _random_unicode(rng: random.Random, n: int) -> str:
    chars = []
    for _ in range(n):
        cp = rng.choice(
            [rng.randint(0, 0x7F), rng.randint(0x80, 0xFFFF), rng.randint(0x10000, 0x10FFFF)]
        )
        chars.append(chr(cp) if not 0xD800 <= cp <= 0xDFFF else " ")
    return "".join(chars)


def test_round_trip_on_any_unicode(trained):
    rng = random.Random(0)
    texts = [*EDGE_CASES.values(), CHINESE_PROSE, *(_random_unicode(rng, 200) for _ in range(30))]
    for text in texts:
        assert trained.decode(trained.encode(text)) == text
        assert trained.decode(trained.encode(text, allow_special=False)) == text


def test_special_tokens_are_never_split(trained):
    ids = trained.encode("a<|endoftext|>b<|im_start|><|im_start|>")
    assert ids.count(trained.special_tokens["<|endoftext|>"]) == 1
    assert ids.count(trained.special_tokens["<|im_start|>"]) == 2
    # Text around a special token is tokenized as if the token were not there.
    assert trained.encode("x<|im_end|> y") == [
        *trained.encode("x"),
        trained.special_tokens["<|im_end|>"],
        *trained.encode(" y"),
    ]
    plain = trained.encode("<|endoftext|>", allow_special=False)
    assert len(plain) > 1 and not set(plain) & set(trained.special_tokens.values())


def test_numpy_sizes_and_seeds_work_like_python_ints():
    text = "low lower lowest newer newest " * 20
    assert train_bpe(text, np.int64(270)).merges == train_bpe(text, 270).merges
    assert mixed_text(np.int64(2_000), seed=np.int64(4)) == mixed_text(2_000, seed=4)


def test_longest_special_token_wins():
    base = train_bpe("abc abc", 260)
    vocab = dict(base.vocab)
    tok = BPETokenizer(vocab, base.merges, {"<a>": 1000, "<a>b": 1001})
    assert tok.encode("<a>b<a>c") == [1001, 1000, *tok.encode("c")]


def test_encode_batch(trained):
    texts = ["one", "two words", ""]
    assert trained.encode_batch(texts) == [trained.encode(t) for t in texts]
    with pytest.raises(TypeError, match="texts"):
        trained.encode_batch("one")


# --------------------------------------------------------------------------------------------
# Streaming


STREAM_TEXT = (
    "Hello   world\t\t\tand\r\n\r\nmore    \n\n  spaces"
    + "字节级编码😀👨‍👩‍👧‍👦 🇫🇷 e\u0301"
    + "<|endoftext|>after<|im_start|>user\n  x<|im_end|>"
    + "    trailing<|im_"
) * 3 + "   "


@pytest.mark.parametrize("chunk_size", [1, 2, 7, 4096])
def test_encode_stream_equals_encode(smol, chunk_size):
    expected = smol.encode(STREAM_TEXT)
    chunks = [STREAM_TEXT[i : i + chunk_size] for i in range(0, len(STREAM_TEXT), chunk_size)]
    assert [i for part in smol.encode_stream(chunks) for i in part] == expected
    # A text-mode file object (newline="" keeps "\r\n" as it is).
    stream = io.StringIO(STREAM_TEXT, newline="")
    assert [i for part in smol.encode_stream(stream, chunk_size) for i in part] == expected
    # Bytes: a chunk may end in the middle of a character.
    data = STREAM_TEXT.encode("utf-8")
    stream = io.BytesIO(data)
    assert [i for part in smol.encode_stream(stream, chunk_size) for i in part] == expected


def test_encode_stream_random_chunking(trained):
    rng = random.Random(1)
    text = mixed_text(20_000, seed=5, special_tokens=SPECIALS)
    expected = trained.encode(text)
    for _ in range(5):
        cuts = sorted(rng.sample(range(1, len(text)), 300))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert [i for part in trained.encode_stream(chunks) for i in part] == expected


def test_encode_stream_without_special_tokens(trained):
    chunks = list("<|endoftext|> x")
    got = [i for part in trained.encode_stream(chunks, allow_special=False) for i in part]
    assert got == trained.encode("<|endoftext|> x", allow_special=False)


def test_encode_stream_special_token_that_prefixes_another():
    base = train_bpe("abc abc", 260)
    tok = BPETokenizer(base.vocab, base.merges, {"<a>": 1000, "<a>b": 1001})
    for text in ("<a>b", "<a>", "x<a>c<a>b"):
        got = [i for part in tok.encode_stream(list(text)) for i in part]
        assert got == tok.encode(text)


def test_encode_stream_rejects_a_plain_string(trained):
    with pytest.raises(TypeError, match="source"):
        next(trained.encode_stream("text"))
    with pytest.raises(ValueError, match="chunk_size"):
        next(trained.encode_stream(["a"], chunk_size=0))
    with pytest.raises(TypeError, match="source"):
        next(trained.encode_stream([1, 2]))


# --------------------------------------------------------------------------------------------
# Training


def test_train_tiny_example_by_hand():
    # "aaabdaaabac" is one pre-token. (a, a) occurs 4 times (overlaps count); after merging it,
    # (aa, a) and (a, b) occur twice each: the tie goes to (a, b), whose ids are smaller.
    tok = train_bpe("aaabdaaabac", 256 + 3)
    assert tok.merges == [("a", "a"), ("a", "b"), ("aa", "ab")]
    assert tok.encode("aaabdaaabac") == [tok.vocab[t] for t in ("aaab", "d", "aaab", "a", "c")]


def test_ties_go_to_the_smallest_pair_of_ids():
    # "ab" and "cd" both occur twice: (a, b) has the smaller ids.
    tok = train_bpe(["ab cd", "cd ab"], 256 + 1)
    assert tok.merges == [("a", "b")]
    # Ids follow the printable characters: "Ġ" (space, U+0120) comes after every letter.
    tok = train_bpe(" x x", 256 + 1)
    assert tok.merges == [("Ġ", "x")]


def test_vocab_ids_and_special_tokens(trained):
    assert trained.vocab_size == 600
    assert [trained.special_tokens[t] for t in SPECIALS] == [0, 1, 2]
    first = [trained.vocab[bytes_to_unicode()[b]] for b in byte_order()]
    assert first == list(range(3, 259))
    assert sorted(trained.vocab.values()) == list(range(3, 600))


def test_special_tokens_in_the_training_text_are_not_counted():
    counts = count_pretokens("x<|endoftext|>x", special_tokens=["<|endoftext|>"])
    assert counts == {"x": 2}


def test_min_frequency_stops_training():
    tok = train_bpe("ab ab ab cd", 1000, min_frequency=3)
    assert tok.merges == [("a", "b")]  # (Ġ, ab) occurs twice: below the threshold


def test_stats_are_filled(corpus):
    stats = TrainStats()
    tok = train_bpe(corpus[:50], 300, stats=stats)
    assert stats["n_merges"] == len(tok.merges) == 44
    assert stats["total_s"] >= stats["merge_s"] > 0


@pytest.mark.parametrize("specials", [[], SPECIALS])
def test_same_merges_and_ids_as_the_tokenizers_library(corpus, specials):
    ours = train_bpe(corpus, 1200, specials)
    theirs = train_bpe_with_tokenizers(corpus, 1200, specials)
    assert ours.merges == tokenizers_merges(theirs)
    assert {**ours.vocab, **ours.special_tokens} == theirs.get_vocab()
    text = "\n\n".join(corpus[:200]) + "<|endoftext|>" * bool(specials)
    assert ours.encode(text) == theirs.encode(text).ids


def test_same_merges_on_multilingual_text():
    text = mixed_text(60_000, seed=2, special_tokens=())
    ours = train_bpe(text, 900)
    theirs = train_bpe_with_tokenizers(text, 900)
    assert ours.merges == tokenizers_merges(theirs)
    assert ours.encode(text) == theirs.encode(text).ids


def test_same_merges_on_small_random_corpora():
    # Tiny alphabets make many ties: every one must be broken as tokenizers breaks it.
    rng = random.Random(0)
    for _ in range(40):
        words = [
            "".join(rng.choice("abc") for _ in range(rng.randint(1, 9)))
            for _ in range(rng.randint(3, 30))
        ]
        text = " ".join(words)
        ours = train_bpe(text, 256 + 30)
        theirs = train_bpe_with_tokenizers(text, 256 + 30)
        assert ours.merges == tokenizers_merges(theirs), text
        assert ours.vocab == theirs.get_vocab(), text


def test_train_errors():
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe("text", 100)
    with pytest.raises(TypeError, match="vocab_size: expected an int, got float 300.0"):
        train_bpe("text", 300.0)
    with pytest.raises(TypeError, match="text_or_iterable"):
        train_bpe(123, 300)
    with pytest.raises(TypeError, match="text_or_iterable"):
        train_bpe(["ok", b"bytes"], 300)
    with pytest.raises(TypeError, match="special_tokens"):
        train_bpe("text", 300, special_tokens="<|endoftext|>")
    with pytest.raises(ValueError, match="special_tokens"):
        train_bpe("text", 300, special_tokens=["<s>", "<s>"])
    with pytest.raises(ValueError, match="min_frequency"):
        train_bpe("text", 300, min_frequency=-1)
    with pytest.raises(ValueError, match="pattern"):
        train_bpe("text", 300, pattern="(")


# --------------------------------------------------------------------------------------------
# Saving and loading


def test_save_load_round_trip(trained, tmp_path):
    path = trained.save(tmp_path / "sub" / "tok.json")
    assert [p.name for p in path.parent.iterdir()] == ["tok.json"]  # no temporary file left
    loaded = BPETokenizer.load(path)
    text = mixed_text(5_000, seed=1, special_tokens=SPECIALS)
    assert loaded.encode(text) == trained.encode(text)
    assert loaded.merges == trained.merges and loaded.special_tokens == trained.special_tokens
    assert json.loads(path.read_text(encoding="utf-8"))["format"] == "llmlab-bpe"


def test_save_is_atomic(trained, tmp_path, monkeypatch):
    path = trained.save(tmp_path / "tok.json")
    before = path.read_bytes()

    def broken_dump(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(RuntimeError):
        trained.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]


def test_load_errors(tmp_path, smollm2_json):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="format"):
        BPETokenizer.load(bad)
    data = json.loads(smollm2_json.read_text(encoding="utf-8"))
    with pytest.raises(ValueError, match="BPE"):
        BPETokenizer.from_tokenizer_json({**data, "model": {**data["model"], "type": "WordPiece"}})
    with pytest.raises(ValueError, match="ByteLevel"):
        BPETokenizer.from_tokenizer_json({**data, "pre_tokenizer": {"type": "Whitespace"}})
    with pytest.raises(ValueError, match="normalizer"):
        BPETokenizer.from_tokenizer_json({**data, "normalizer": {"type": "NFC"}})


def test_constructor_errors(trained):
    with pytest.raises(TypeError, match="vocab"):
        BPETokenizer([], [])
    with pytest.raises(ValueError, match="merges"):
        BPETokenizer(trained.vocab, [("a", "zzz-not-a-token")])
    with pytest.raises(ValueError, match="special_tokens"):
        BPETokenizer(trained.vocab, trained.merges, {"<x>": trained.vocab["a"]})
    with pytest.raises(TypeError, match="text"):
        trained.encode(b"bytes")
    with pytest.raises(ValueError, match="ids"):
        trained.decode([10**9])


def test_cache_does_not_change_ids(corpus):
    text = "\n\n".join(corpus[:100])
    with_cache = train_bpe(corpus[:100], 400)
    no_cache = BPETokenizer(with_cache.vocab, with_cache.merges, cache_size=0)
    tiny_cache = BPETokenizer(with_cache.vocab, with_cache.merges, cache_size=3)
    assert with_cache.encode(text) == no_cache.encode(text) == tiny_cache.encode(text)


# --------------------------------------------------------------------------------------------
# Test text


def test_mixed_text_is_deterministic_and_mixed():
    a = mixed_text(100_000, seed=7)
    assert a == mixed_text(100_000, seed=7) and a != mixed_text(100_000, seed=8)
    assert len(a.encode("utf-8")) >= 100_000
    for needle in ("def ", "\t", "<|endoftext|>"):
        assert needle in a
    assert any("\u4e00" <= c <= "\u9fa5" for c in a) and any(ord(c) > 0x1F000 for c in a)
    assert "<|" not in mixed_text(100_000, seed=7, special_tokens=())
    with pytest.raises(ValueError, match="n_bytes"):
        mixed_text(0)


def test_chinese_prose_is_a_few_kilobytes():
    assert 1000 <= len(CHINESE_PROSE.encode("utf-8")) <= 3000


def test_gpt2_pattern_is_smollm2s():
    assert GPT2_PATTERN.startswith("'s|'t|'re|'ve|'m|'ll|'d")
