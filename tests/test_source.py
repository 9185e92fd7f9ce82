"""llmlab.source.show: the real source, highlighted in notebooks, plain text for CI."""

from __future__ import annotations

import pytest

from llmlab.nn import norms
from llmlab.source import HEADER, Source, resolve, show, source_of
from llmlab.training import optim


def test_show_gives_the_real_source_under_a_header():
    text = repr(show(norms.RMSNorm))
    assert text.startswith(f"{HEADER}llmlab.nn.norms.RMSNorm\nclass RMSNorm")
    assert "def forward" in text


def test_a_method_is_dedented_and_named_by_its_class():
    text = source_of(optim.AdamW.__init__)
    assert text.splitlines()[0] == f"{HEADER}llmlab.training.optim.AdamW.__init__"
    assert text.splitlines()[1].startswith("def __init__")


def test_docstrings_can_be_left_out():
    full, short = source_of(norms.RMSNorm), source_of(norms.RMSNorm, docstring=False)
    assert '"""' in full and '"""' not in short
    assert "(docstrings omitted)" in short.splitlines()[0]
    assert "def forward" in short


def test_markdown_renders_a_python_code_block():
    md = show(norms.RMSNorm)._repr_markdown_()
    assert md.startswith("```python\n# source:") and md.endswith("\n```")
    assert Source("x = '```'")._repr_markdown_().startswith("````python")


def test_several_objects_and_resolve_round_trip():
    text = repr(show(norms.RMSNorm, optim.clip_grad_norm))
    assert text.count(HEADER) == 2
    assert resolve("llmlab.training.optim.AdamW.__init__") is optim.AdamW.__init__


@pytest.mark.parametrize("bad", [len, lambda x: x, 3])
def test_what_has_no_source_is_a_clear_error(bad):
    with pytest.raises(TypeError, match="show"):
        show(bad)
