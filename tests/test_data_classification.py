"""Contract of llmlab.data.classification: docstrings labelled by their standard-library package."""

from __future__ import annotations

import pytest

from llmlab.data.classification import (
    NEAR_DUPLICATE_JACCARD,
    PACKAGES,
    docstring_packages,
    other_docstrings,
    package_of,
)
from llmlab.data.dedup import jaccard, shingles


@pytest.fixture(scope="module")
def dataset():
    return docstring_packages()


def _splits(d):
    return {"train": d.train, "val": d.val, "test": d.test}


def test_deterministic_and_seeded(dataset):
    again = docstring_packages()
    assert again == dataset
    other = docstring_packages(seed=1)
    assert other.train.texts != dataset.train.texts
    assert sorted(other.train.labels) == sorted(dataset.train.labels)  # still balanced


def test_balanced_and_sized(dataset):
    assert dataset.label_names == PACKAGES and dataset.n_classes == 6
    per_class = dataset.settings["per_class"]
    expected = {"train": 0.6, "val": 0.1, "test": 0.3}
    for name, split in _splits(dataset).items():
        counts = split.counts(dataset.n_classes)
        assert counts == [round(expected[name] * per_class)] * dataset.n_classes, name
    assert sum(dataset.sizes.values()) == per_class * dataset.n_classes
    # the labels of a split are shuffled, not in blocks of one class
    assert len(set(dataset.train.labels[:12])) > 2


def test_labels_are_the_source_package(dataset):
    for split in _splits(dataset).values():
        for label, source in zip(split.labels, split.sources, strict=True):
            assert package_of(source) == dataset.label_names[label]
    assert package_of("email/message.py:Message.get") == "email"
    assert package_of("inspect.py:getdoc") is None


def test_texts_are_capped_and_on_one_line(dataset):
    max_chars = dataset.settings["max_chars"]
    for split in _splits(dataset).values():
        assert all(
            0 < len(t) <= max_chars and "\n" not in t and t == t.strip() for t in split.texts
        )
    short = docstring_packages(max_chars=60, per_class=50)
    assert max(len(t) for t in short.train.texts) <= 60


def test_splits_are_disjoint_without_near_duplicates(dataset):
    splits = _splits(dataset)
    texts = {name: {t.lower() for t in s.texts} for name, s in splits.items()}
    assert all(len(texts[n]) == len(s) for n, s in splits.items())  # no duplicates inside either
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["val"]
    assert not texts["val"] & texts["test"]
    sets = {n: [shingles(t, 3) for t in s] for n, s in texts.items()}
    worst = max(jaccard(a, b) for a in sets["test"] + sets["val"] for b in sets["train"])
    assert worst < NEAR_DUPLICATE_JACCARD


def test_describe_counts_every_class(dataset):
    text = dataset.describe()
    assert "stdlib-docstring-packages" in text and "train 468" in text
    for name in PACKAGES:
        assert name in text


def test_other_docstrings_are_outside_the_task(dataset):
    texts = other_docstrings(PACKAGES, n=40, seed=0)
    assert len(texts) == 40 and texts == other_docstrings(PACKAGES, n=40, seed=0)
    inside = {t for s in _splits(dataset).values() for t in s.texts}
    assert not inside & set(texts)
    assert all(len(t) <= dataset.settings["max_chars"] for t in texts)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"packages": "email"}, "packages"),
        ({"packages": ["email"]}, "packages"),
        ({"packages": ["email", "email"]}, "packages"),
        ({"packages": ["email", "no_such_package"]}, "packages"),
        ({"per_class": 0}, "per_class"),
        ({"per_class": 10_000}, "per_class"),
        ({"max_chars": 5}, "max_chars"),
        ({"fractions": (0.5, 0.5)}, "fractions"),
        ({"fractions": (0.5, 0.5, 0.5)}, "fractions"),
        ({"fractions": (0.0, 0.5, 0.5)}, "fractions"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_errors_name_the_argument(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        docstring_packages(**kwargs)


def test_other_docstrings_errors_name_the_argument():
    with pytest.raises(ValueError, match="n"):
        other_docstrings(PACKAGES, n=0)
    with pytest.raises(ValueError, match="n"):
        other_docstrings(PACKAGES, n=10**6)


# --------------------------------------------------------------------------------------------
# The same question asked of code


@pytest.fixture(scope="module")
def functions():
    from llmlab.data.classification import function_packages

    return function_packages(per_class=40, seed=0)


def test_function_packages_split_by_file_and_balanced(functions):
    files = {
        part: {s.split(":")[0] for s in split.sources} for part, split in _splits(functions).items()
    }
    assert not files["train"] & files["test"] and not files["train"] & files["val"]
    assert not files["val"] & files["test"]
    for part, n in (("train", 24), ("val", 4), ("test", 12)):
        assert getattr(functions, part).counts(functions.n_classes) == [n] * len(PACKAGES)
    for split in _splits(functions).values():
        for label, source in zip(split.labels, split.sources, strict=True):
            assert package_of(source) == functions.label_names[label]


def test_function_texts_are_code_without_docstrings(functions):
    import ast

    for text in functions.train.texts + functions.test.texts:
        assert len(text) <= 240 and text.startswith(("def ", "async def "))
        assert len(text.splitlines()) >= 2 and "" not in text.splitlines()
        header = text.splitlines()[1].strip()
        assert not header.startswith(('"""', "'''", 'r"""')), text  # the docstring is gone
    full = "\n".join(functions.test.texts[0].splitlines())
    assert isinstance(ast.parse(full.splitlines()[0] + "\n    pass"), ast.Module)  # a real def


def test_function_packages_deterministic_and_no_near_copies_across_splits(functions):
    from llmlab.data.classification import function_packages

    assert function_packages(per_class=40, seed=0) == functions
    assert function_packages(per_class=40, seed=1).test.sources != functions.test.sources
    train = [shingles(t.lower(), 3) for t in functions.train.texts]
    for text in functions.test.texts:
        test = shingles(text.lower(), 3)
        assert all(jaccard(test, other) < NEAR_DUPLICATE_JACCARD for other in train)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"per_class": 100_000}, "per_class: 'asyncio' has .* distinct functions in its train"),
        ({"max_chars": 10}, "max_chars: expected at least 40"),
        ({"packages": ["asyncio"]}, "packages: expected two or more"),
        ({"packages": ["asyncio", "no_such_package"]}, "packages: 'no_such_package' has no"),
        ({"fractions": (0.5, 0.5, 0.0)}, "fractions: expected shares"),
    ],
)
def test_function_packages_errors_name_the_argument(kwargs, match):
    from llmlab.data.classification import function_packages

    with pytest.raises(ValueError, match=match):
        function_packages(**kwargs)
