"""The figures of structure: each builds without warnings, says what it shows, and is legible.

Legible here means: every text at 9 pt or more, no two texts overlapping once drawn, every
box label inside its box, the figure at most 10 inches wide (a notebook's width).
"""

from __future__ import annotations

import io
import itertools
import warnings

import matplotlib
import pytest

matplotlib.use("agg")

import matplotlib.pyplot as plt  # noqa: E402

from llmlab import diagrams  # noqa: E402

PIPELINE = [
    ("raw", "12,000 docs"),
    ("language filter", "11,200"),
    ("quality filter", 8950),
    ("dedup (MinHash)", "7,410"),
    ("PII scrub", "7,410"),
    ("tokenize + pack", "3.1M tokens"),
]
MERGES = [("t", "h", 1520), ("Ġ", "th", 1210), ("Ġth", "e", 980), ("i", "n", 870), ("e", "r", 640)]

# (figure, expected texts: each must appear in some text of the figure)
FIGURES = {
    "pre_norm": (lambda: diagrams.transformer_block("pre"), ["RMSNorm", "⊕", "FFN", "× N"]),
    "post_norm": (lambda: diagrams.transformer_block("post"), ["RMSNorm", "⊕", "self-attention"]),
    "pre_vs_post": (diagrams.pre_vs_post_norm, ["Pre-norm", "Post-norm", "LayerNorm", "⊕"]),
    "encoder_decoder": (
        diagrams.encoder_decoder,
        ["cross-attention", "K, V", "Q", "causal", "bidirectional", "encoder output"],
    ),
    "head_split_merge": (
        diagrams.head_split_merge,
        ["head 0", "head 1", "(heads, seq, head_dim)", "(seq, d_model)", "W_O"],
    ),
    "heads_4": (lambda: diagrams.head_split_merge(16, 4, seq=3), ["head 3", "attention"]),
    "rope_rotation": (diagrams.rope_rotation, ["m = 3", "rotate-half", "interleaved", "θ₀"]),
    "attention_tiling": (
        diagrams.attention_tiling,
        ["skip", "Q block 2", "m_new = max(m, rowmax(s))", "out = acc / l"],
    ),
    "tiling_16": (lambda: diagrams.attention_tiling(16, 4, query_block=0), ["Q block 0"]),
    "kv_cache": (diagrams.kv_cache, ["with a KV cache", "without a cache", "q₄", "10 = 1"]),
    "bpe_merges": (lambda: diagrams.bpe_merges(MERGES), ["Ġthe", "1,520", "how 'Ġthe' was built"]),
    "data_pipeline": (lambda: diagrams.data_pipeline(PIPELINE), ["dedup", "3.1M tokens", "8,950"]),
    "pipeline_2_rows": (
        lambda: diagrams.data_pipeline([*PIPELINE, ("shuffle", None), "write shards"]),
        ["write shards"],
    ),
    "training_loop": (
        diagrams.training_loop,
        ["forward", "backward", "clip", "optimizer step", "LR schedule", "every k steps"],
    ),
    "sparse_attention_pattern": (
        diagrams.sparse_attention_pattern,
        ["full causal", "136 scores", "sliding window (4) + 2 global"],
    ),
    "lora_layer": (diagrams.lora_layer, ["frozen", "zero init", "9,216", "α/r = 16/8"]),
}


def _texts(fig):
    """The texts a reader sees: visible, non-empty."""
    return [
        t
        for ax in fig.axes
        for t in [*ax.texts, ax.title]
        if t.get_visible() and t.get_text().strip() and t.get_alpha() != 0
    ] + [t for t in fig.texts if t.get_visible() and t.get_text().strip()]


@pytest.fixture(scope="module", params=sorted(FIGURES))
def built(request):
    """Each figure, built and drawn once for all the tests that look at it."""
    make, expected = FIGURES[request.param]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = make()
        fig.canvas.draw()  # a missing glyph warns at draw time
    yield fig, expected
    plt.close(fig)


def test_figure_says_what_it_shows(built):
    fig, expected = built
    texts = [t.get_text() for t in _texts(fig)]
    for want in expected:
        assert any(want in t for t in texts), f"{want!r} not among {texts}"


def test_figure_is_legible(built):
    fig, _ = built
    assert fig.get_figwidth() <= 10.0, fig.get_figwidth()
    renderer = fig.canvas.get_renderer()
    texts = _texts(fig)
    for t in texts:
        assert t.get_fontsize() >= 9, (t.get_text(), t.get_fontsize())
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    overlaps = [
        (a, b)
        for (a, ea), (b, eb) in itertools.combinations(boxes, 2)
        if ea.x0 < eb.x1 - 1 and eb.x0 < ea.x1 - 1 and ea.y0 < eb.y1 - 1 and eb.y0 < ea.y1 - 1
    ]
    assert not overlaps, overlaps
    fig_box = fig.bbox
    for text, e in boxes:
        assert fig_box.x0 - 1 <= e.x0 and e.x1 <= fig_box.x1 + 1, f"{text!r} leaves the figure"
        assert fig_box.y0 - 1 <= e.y0 and e.y1 <= fig_box.y1 + 1, f"{text!r} leaves the figure"


def test_box_labels_fit_their_boxes(built):
    fig, _ = built
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    patches = {p.get_gid(): p for p in ax.patches if p.get_gid()}
    labels = [t for t in ax.texts if (t.get_gid() or "").endswith("-label")]
    for t in labels:
        box = patches[t.get_gid().removesuffix("-label")].get_window_extent(renderer)
        e = t.get_window_extent(renderer)
        inside = box.x0 - 1 <= e.x0 and e.x1 <= box.x1 + 1 and box.y0 - 1 <= e.y0
        assert inside and e.y1 <= box.y1 + 1, f"{t.get_text()!r} spills out of its box"


def test_figure_saves_as_png(built):
    fig, _ = built
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")


def test_functions_do_not_open_windows_or_leak_figures():
    before = set(plt.get_fignums())
    fig = diagrams.kv_cache(2)
    assert set(plt.get_fignums()) - before == {fig.number}  # one figure, no scratch ones
    plt.close(fig)


def test_bpe_merges_accepts_the_course_tokenizer_and_tokenizers_format():
    from llmlab.tokenization import train_bpe

    text = "the cat sat on the mat. the hat, the bat. " * 20
    tok = train_bpe(text, 256 + 10)
    for merges in (tok, tok.merges, [f"{a} {b}" for a, b in tok.merges]):
        fig = diagrams.bpe_merges(merges, max_merges=6)
        texts = [t.get_text() for t in _texts(fig)]
        assert any("more merges" in t for t in texts), texts
        assert any(tok.merges[0][0] + tok.merges[0][1] in t for t in texts)
        plt.close(fig)


def test_bpe_merges_accepts_pairs_with_counts():
    fig = diagrams.bpe_merges([(("t", "h"), 10), (("th", "e"), 7.5)])
    texts = [t.get_text() for t in _texts(fig)]
    assert "10" in texts and "7.5" in texts
    plt.close(fig)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: diagrams.transformer_block("middle"), ValueError, "norm: expected"),
        (lambda: diagrams.head_split_merge(9, 2), ValueError, "d_model: expected a multiple"),
        (lambda: diagrams.head_split_merge(8.0, 2), TypeError, "d_model: expected an int"),
        (lambda: diagrams.attention_tiling(8, 3), ValueError, "seq: expected a multiple"),
        (lambda: diagrams.attention_tiling(8, 2, query_block=4), ValueError, "query_block"),
        (lambda: diagrams.kv_cache(0), ValueError, "steps: expected a positive int"),
        (lambda: diagrams.bpe_merges([("t",)]), ValueError, r"merges\[0\]"),
        (lambda: diagrams.bpe_merges("t h"), TypeError, "merges: expected"),
        (lambda: diagrams.bpe_merges([]), ValueError, "at least one"),
        (lambda: diagrams.data_pipeline([]), ValueError, "stages: expected"),
        (lambda: diagrams.data_pipeline([(1, 2)]), ValueError, r"stages\[0\]"),
        (lambda: diagrams.sparse_attention_pattern(16, 20), ValueError, "window"),
        (lambda: diagrams.rope_rotation(head_dim=7), ValueError, "head_dim"),
    ],
)
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
    plt.close("all")


def test_import_llmlab_does_not_import_matplotlib():
    import subprocess
    import sys

    code = "import sys, llmlab.diagrams; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_primitive_places_boxes_arrows_and_groups():
    d = diagrams.Diagram(8, 5, unit=0.5, title="A sketch")
    a = d.box(1.5, 4.0, "input", "io")
    b = d.box(6.0, 1.0, "attention", "attention", w=2.4)
    plus = d.add_node(1.5, 1.0)
    assert (b.left, b.top) == ((4.8, 1.0), (6.0, 1.35))
    straight = d.arrow(a, plus)
    elbow = d.arrow(a, b, elbow="hv", label="K, V")
    d.arrow(plus, b, elbow="vh")
    d.group(0.2, 0.3, 7.8, 4.6, "× N layers")
    d.note(4.0, 2.5, "(batch, seq, d_model)")
    d.grid(3.0, 3.0, [["#8DB8E8", None], [None, "#F4A582"]], labels=[["a", ""], ["", "b"]])

    # Arrows leave and enter by the facing sides: down out of `a`; the elbow leaves `a` to the
    # right, turns above `b` and comes down into its top, where the arrowhead's tip is.
    def near(vertices, point):
        return any(abs(x - point[0]) < 0.05 and abs(y - point[1]) < 0.05 for x, y in vertices)

    assert straight.get_path().vertices[0].tolist() == [1.5, 4.0 - 0.35]
    vertices = elbow.get_path().vertices.tolist()
    assert vertices[0] == [a.right[0], 4.0]
    assert near(vertices, (6.0, 4.0)) and near(vertices, b.top)
    with pytest.raises(ValueError, match="kind: expected one of"):
        d.box(0, 0, "x", "mystery")
    with pytest.raises(ValueError, match="elbow"):
        d.arrow(a, b, elbow="zigzag")
    texts = [t.get_text() for t in _texts(d.figure)]
    assert {"A sketch", "input", "attention", "⊕", "K, V", "× N layers", "a", "b"} <= set(texts)
    plt.close(d.figure)
