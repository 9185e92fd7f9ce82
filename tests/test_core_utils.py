"""Small llmlab helpers: progress bars, plot style, the course facts, argument checks."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from llmlab import course, plotting, progress, validate  # noqa: E402


def test_progress_counts_and_can_be_silenced(monkeypatch, capsys):
    assert sum(progress.progress(range(5), desc="x")) == 10
    monkeypatch.setenv(progress.PROGRESS_ENV, "0")
    bar = progress.progress(range(3))
    assert bar.disable and list(bar) == [0, 1, 2]


def test_course_style_and_labels():
    plotting.use_course_style()
    assert matplotlib.rcParams["axes.grid"] is True
    fig, ax = plt.subplots()
    plotting.labelled(ax, "Loss", "step", "loss (nats)")
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("Loss", "step", "loss (nats)")
    with pytest.raises(ValueError, match="ylabel"):
        plotting.labelled(ax, "Loss", "step", "")
    plt.close(fig)


def test_colab_cell_installs_from_the_repository_without_torch():
    cell = course.COLAB_SETUP_CELL
    assert f"github.com/{course.REPOSITORY}@{course.BRANCH}" in cell
    assert '"google.colab" in sys.modules' in cell
    assert "torch" not in cell  # Colab's torch is never reinstalled
    compile(cell, "colab-cell", "exec")


def test_read_requirements(tmp_path):
    lock = tmp_path / "r.txt"
    lock.write_text("# c\nFoo_Bar==1.2 ; python_version > '3'\nbaz==0.1\n")
    assert course.read_requirements(lock) == {"foo-bar": "1.2", "baz": "0.1"}
    lock.write_text("foo>=1\n")
    with pytest.raises(ValueError, match="expected 'name==version'"):
        course.read_requirements(lock)


def test_int_checks_name_the_argument_and_return_the_value():
    assert validate.require_int(3, "n") == 3 and validate.require_positive_int(1, "n") == 1
    assert validate.require_int(-5, "pad", None) == -5 and validate.require_int(0, "length", 0) == 0
    with pytest.raises(TypeError, match="n: expected an int, got bool True"):
        validate.require_positive_int(True, "n")
    with pytest.raises(TypeError, match="n: expected an int, got float 2.0"):
        validate.require_int(2.0, "n")
    with pytest.raises(ValueError, match="n: expected a positive int, got 0"):
        validate.require_positive_int(0, "n")
    with pytest.raises(ValueError, match="max_len: expected an int >= 5, got 4"):
        validate.require_int(4, "max_len", 5)


def test_numbers_from_numpy_are_ints_and_floats():
    import numpy as np

    value = validate.require_positive_int(np.int64(100), "vocab_size")
    assert value == 100 and type(value) is int
    assert type(validate.require_real(np.float32(0.5), "dropout")) is float
    with pytest.raises(TypeError, match="vocab_size: expected an int, got float64"):
        validate.require_positive_int(np.float64(100), "vocab_size")


def test_token_ids_check_names_the_argument():
    import torch

    ids = torch.tensor([[1, 2, 3]])
    validate.require_token_ids(ids, "input_ids", 4, batch=1, max_seq=3)
    cases = [
        (ids[0], ValueError, r"input_ids: expected 2 dims \(batch, seq\), .*input_ids\[None\]"),
        (ids.float(), TypeError, "input_ids: expected token ids of dtype int64, got torch.float32"),
        ([[1, 2]], TypeError, "input_ids: expected a torch.Tensor, got list"),
    ]
    for bad, error, match in cases:
        with pytest.raises(error, match=match):
            validate.require_token_ids(bad, "input_ids")
    with pytest.raises(ValueError, match=r"src: expected ids in \[0, 3\), got min 1, max 3"):
        validate.require_token_ids(ids, "src", 3)
    with pytest.raises(ValueError, match=r"ids: expected batch 2, got shape \(1, 3\)"):
        validate.require_token_ids(ids, "ids", batch=2)
    with pytest.raises(ValueError, match=r"ids: expected seq <= max_seq=2, got shape \(1, 3\)"):
        validate.require_token_ids(ids, "ids", max_seq=2)
