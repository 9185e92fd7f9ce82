"""Contract of llmlab.data: the standard-library corpora and the verifiable task generator."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llmlab import data
from llmlab.data import Task, grade_number, grade_numbers, grade_word, make_tasks
from llmlab.data import tasks as task_module

# -----------------------------------------------------------------------------
# Corpora (the full parse takes a few seconds once; every later call is memoised)


@pytest.fixture(scope="module")
def docstrings():
    return data.docstring_corpus()


@pytest.fixture(scope="module")
def code():
    return data.code_corpus()


def test_import_is_cheap():
    utils = Path(data.__file__).resolve().parents[2]
    code = "import sys, llmlab.data; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(utils)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


def test_docstring_corpus_is_megabytes_of_unique_prose(docstrings):
    assert docstrings.n_bytes > 1_000_000
    assert docstrings.n_documents > 3_000
    assert len(set(docstrings.documents)) == docstrings.n_documents
    assert min(len(d) for d in docstrings.documents) >= data.MIN_DOCSTRING_CHARS
    # cleaned with inspect.cleandoc: no common indentation, no surrounding blank lines
    assert all(d == d.strip() for d in docstrings.documents)
    assert sum(d.startswith("    ") for d in docstrings.documents) < docstrings.n_documents / 100


def test_code_corpus_is_the_parsed_files(code):
    assert code.n_bytes > 5_000_000
    assert code.n_documents > 300
    assert all(s.endswith(".py") for s in code.sources)
    assert len(set(code.sources)) == code.n_documents
    assert code.sources == sorted(code.sources)
    assert "import" in code.documents[code.sources.index("os.py")]


@pytest.mark.parametrize("name", ["docstrings", "code"])
def test_corpus_skips_tests_and_third_party(name, request):
    corpus = request.getfixturevalue(name)
    for source in corpus.sources:
        parts = source.split(":")[0].split("/")
        assert not {"site-packages", "test", "tests", "idle_test", "__pycache__"} & set(parts)
        assert not parts[0].startswith(("config-", "_sysconfigdata_"))


def test_docstring_sources_name_file_and_object(docstrings):
    assert all(":" in s and s.split(":")[0].endswith(".py") for s in docstrings.sources)
    assert "os.py:<module>" in docstrings.sources
    doc = docstrings.documents[docstrings.sources.index("json/__init__.py:dumps")]
    assert "JSON" in doc


def test_corpora_are_deterministic(docstrings, code):
    again = data.docstring_corpus()
    assert again.documents == docstrings.documents and again.sources == docstrings.sources
    assert data.code_corpus().documents == code.documents
    assert again.documents is not docstrings.documents  # callers may edit their copy


def test_corpus_sizes_text_and_describe(docstrings):
    assert docstrings.n_bytes == len(docstrings.text.encode("utf-8"))
    assert docstrings.text.startswith(docstrings.documents[0] + "\n\n")
    line = docstrings.describe()
    assert "stdlib-docstrings" in line and f"{docstrings.n_documents:,}" in line
    assert "{}.{}.{}".format(*sys.version_info[:3]) in line and "\n" not in line
    assert len(repr(docstrings)) < 200  # never megabytes in a notebook


@pytest.mark.parametrize("max_bytes", [1, 5_000, 50_000])
def test_max_bytes_takes_a_prefix_of_whole_documents(docstrings, code, max_bytes):
    for full, small in [
        (docstrings, data.docstring_corpus(max_bytes=max_bytes)),
        (code, data.code_corpus(max_bytes=max_bytes)),
    ]:
        n = small.n_documents
        assert small.n_bytes <= max_bytes
        assert small.documents == full.documents[:n] and small.sources == full.sources[:n]
        one_more = data.Corpus(full.name, full.documents[: n + 1], full.sources[: n + 1])
        assert one_more.n_bytes > max_bytes  # the longest prefix that fits


@pytest.mark.parametrize("max_bytes", [0, -1, 1.5, True, "1000"])
def test_max_bytes_is_validated(max_bytes):
    with pytest.raises(ValueError, match="max_bytes"):
        data.docstring_corpus(max_bytes=max_bytes)


def test_split_is_a_deterministic_partition(docstrings):
    train, val, test = docstrings.split()
    n = docstrings.n_documents
    assert (train.n_documents, val.n_documents, test.n_documents) == (
        round(0.8 * n),
        round(0.9 * n) - round(0.8 * n),
        n - round(0.9 * n),
    )
    assert [c.name for c in (train, val, test)] == [
        "stdlib-docstrings/train",
        "stdlib-docstrings/val",
        "stdlib-docstrings/test",
    ]
    parts = [set(c.documents) for c in (train, val, test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert parts[0] | parts[1] | parts[2] == set(docstrings.documents)
    for part in (train, val, test):  # sources travel with their documents
        assert all(
            docstrings.sources[docstrings.documents.index(d)] == s
            for d, s in zip(part.documents[:20], part.sources[:20], strict=True)
        )

    assert docstrings.split()[1].documents == val.documents
    assert docstrings.split(seed=1)[1].documents != val.documents


def test_split_fractions_are_respected_and_validated():
    corpus = data.Corpus("toy", [f"doc {i}" for i in range(10)], [f"src {i}" for i in range(10)])
    assert [c.n_documents for c in corpus.split((0.5, 0.5, 0.0))] == [5, 5, 0]
    assert [c.n_documents for c in corpus.split([0.7, 0.2, 0.1])] == [7, 2, 1]
    for bad in [(0.8, 0.1), (0.8, 0.1, 0.2), (1.2, -0.1, -0.1), (0.5, 0.5, float("nan"))]:
        with pytest.raises(ValueError, match="fractions"):
            corpus.split(bad)
    with pytest.raises(TypeError, match="fractions"):
        corpus.split(("a", "b", "c"))


def test_corpus_checks_its_fields():
    with pytest.raises(ValueError, match="sources"):
        data.Corpus("toy", ["a", "b"], ["only one"])


# -----------------------------------------------------------------------------
# Verifiable tasks


def _wrong_responses(task: Task) -> list[str]:
    """Plausible mistakes that a checker must reject."""
    wrong = ["", "I don't know."]
    if task.kind in {
        "addition",
        "multiplication",
        "count_letter",
        "next_in_sequence",
        "larger_number",
    }:
        value = int(task.answer)
        wrong += [str(value + 1), str(value - 1), f"The answer is {value + 1}."]
    elif task.kind == "sort_numbers":
        numbers = task.answer.split(", ")
        wrong += [
            ", ".join(reversed(numbers)),
            ", ".join(numbers[:-1]),
            ", ".join(numbers[:-1] + [str(int(numbers[-1]) + 1)]),
        ]
    elif task.kind == "reverse_word":
        word = task.answer[::-1]
        wrong += [word, task.answer[1:] + task.answer[0], task.answer[:-1]]
    elif task.kind == "uppercase_word":
        wrong += [task.answer.lower(), task.answer.capitalize(), task.answer[:-1]]
    elif task.kind == "list_item":
        others = [w.strip("'") for w in re.search(r"list (.*)\?", task.prompt).group(1).split(", ")]
        wrong += [w for w in others if w != task.answer] + [task.answer[:-1]]
    elif task.kind == "first_letter":
        word = re.search(r"'(\w+)'", task.prompt).group(1)
        wrong += [word, word[-1] if word[-1] != word[0] else "q", "The letter is x."]
    return wrong


def test_builtin_kinds_are_registered():
    assert len(data.BUILTIN_TASK_KINDS) >= 5
    assert data.task_kinds()[: len(data.BUILTIN_TASK_KINDS)] == list(data.BUILTIN_TASK_KINDS)


def test_easy_kinds_are_registered_after_the_builtin_ones_and_protected():
    n = len(data.BUILTIN_TASK_KINDS)
    assert data.task_kinds()[n : n + 3] == list(task_module.EASY_TASK_KINDS)
    assert not set(task_module.EASY_TASK_KINDS) & {t.kind for t in make_tasks(50)}  # not by default
    with pytest.raises(ValueError, match="built in"):
        data.register_task_kind("list_item", lambda rng, d: None, replace=True)
    task = make_tasks(1, seed=0, kinds="larger_number")[0]
    a, b = map(int, re.findall(r"\d+", task.prompt))
    assert task.answer == str(max(a, b)) and a != b


@pytest.mark.parametrize("difficulty", range(1, data.MAX_DIFFICULTY + 1))
@pytest.mark.parametrize("kind", data.BUILTIN_TASK_KINDS + task_module.EASY_TASK_KINDS)
def test_reference_answers_pass_and_mistakes_fail(kind, difficulty):
    for task in make_tasks(20, seed=difficulty, kinds=[kind], difficulty=difficulty):
        assert task.kind == kind and task.prompt.endswith(".") and task.answer
        assert task.check(task.answer), task
        assert task.check(f"Sure! The answer is {task.answer}."), task
        assert task.check(f"Let me think.\n\n{task.answer}"), task
        for wrong in _wrong_responses(task):
            assert not task.check(wrong), (task, wrong)


def test_number_extraction_from_chatty_text():
    task = Task("addition", "What is 37 + 58? Answer with the number only.", "95", grade_number)
    for right in [
        "95",
        "The answer is 95.",
        "37 + 58 = 95",
        "**95**",
        "Answer: 95",
        "The answer is 95 (37 + 58).",
        "#### 95",
        "95.0",
        " 95 \n",
    ]:
        assert task.check(right), right
    for wrong in ["", "94", "96", "The answer is 96.", "37 + 58", "9 5", "950", "-95"]:
        assert not task.check(wrong), wrong
    assert grade_number("It is 1,234.", "1234")
    assert grade_number("The next one is -3.", "-3")


def test_word_and_list_extraction():
    assert grade_word("The reversed word is 'olleh'.", "olleh")
    assert grade_word("Answer: OLLEH, as requested.", "olleh")
    assert not grade_word("OLLEH", "olleh", case_sensitive=True)
    assert not grade_word("hello", "olleh")
    assert grade_numbers("Sorted: 7, 19, 42", "7, 19, 42")
    assert grade_numbers("7,19,42", "7, 19, 42")
    assert grade_numbers("The 3 numbers in order are 7, 19, 42.", "7, 19, 42")
    assert not grade_numbers("42, 19, 7", "7, 19, 42")
    assert not grade_numbers("19, 42", "7, 19, 42")


def test_check_needs_a_string():
    task = make_tasks(1)[0]
    with pytest.raises(TypeError, match="response"):
        task.check(None)


def test_make_tasks_is_deterministic_and_seeded():
    assert make_tasks(30, seed=7) == make_tasks(30, seed=7)
    assert make_tasks(30, seed=7) != make_tasks(30, seed=8)
    assert make_tasks(30, seed=7, difficulty=2) != make_tasks(30, seed=7)
    assert make_tasks(0) == []


def test_make_tasks_leaves_the_global_random_state_alone():
    random.seed(123)
    state = random.getstate()
    make_tasks(20, seed=1)
    assert random.getstate() == state


def test_make_tasks_mixes_kinds_evenly():
    tasks = make_tasks(45, seed=3)
    counts = {k: sum(t.kind == k for t in tasks) for k in data.BUILTIN_TASK_KINDS}
    assert max(counts.values()) - min(counts.values()) <= 1
    assert [t.kind for t in tasks[:7]] != list(data.BUILTIN_TASK_KINDS)  # shuffled, not cycled
    chosen = make_tasks(10, seed=0, kinds=["addition", "reverse_word"])
    assert sorted(t.kind for t in chosen) == ["addition"] * 5 + ["reverse_word"] * 5
    assert {t.kind for t in make_tasks(3, kinds="addition")} == {"addition"}


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n": -1}, "n"),
        ({"n": 2.0}, "n"),
        ({"n": 5, "difficulty": 0}, "difficulty"),
        ({"n": 5, "difficulty": data.MAX_DIFFICULTY + 1}, "difficulty"),
        ({"n": 5, "kinds": ["addition", "telepathy"]}, "kinds"),
        ({"n": 5, "kinds": []}, "kinds"),
        ({"n": 5, "kinds": ["addition", "addition"]}, "kinds"),
    ],
)
def test_make_tasks_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name) as error:
        make_tasks(**kwargs)
    if name == "kinds" and kwargs["kinds"]:
        assert "addition" in str(error.value)  # the message lists the allowed kinds


def test_to_chat():
    task = Task("toy", "Say hi.", "hi")
    assert task.to_chat() == [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "hi"},
    ]
    assert task.check("  HI ") and not task.check("hi there")  # default: normalised exact match


@pytest.fixture
def registry():
    """Restores the registry after a test that registers kinds."""
    saved = dict(data._TASK_KINDS)
    yield
    data._TASK_KINDS.clear()
    data._TASK_KINDS.update(saved)


def test_register_task_kind(registry):
    def capital(rng, difficulty):
        country = rng.choice(["France", "Japan"])
        answer = {"France": "Paris", "Japan": "Tokyo"}[country]
        return Task("capital", f"What is the capital of {country}?", answer, grade_word)

    data.register_task_kind("capital", capital)
    assert "capital" in data.task_kinds()
    tasks = make_tasks(4, seed=0, kinds=["capital", "addition"])
    assert sorted(t.kind for t in tasks) == ["addition", "addition", "capital", "capital"]
    assert all(t.check(f"It is {t.answer}.") for t in tasks)
    assert make_tasks(14, seed=0) == make_tasks(14, seed=0, kinds=data.BUILTIN_TASK_KINDS)

    with pytest.raises(ValueError, match="'capital' is already registered"):
        data.register_task_kind("capital", capital)
    data.register_task_kind("capital", capital, replace=True)  # a notebook cell run twice
    with pytest.raises(ValueError, match="built in"):
        data.register_task_kind("addition", capital, replace=True)
    with pytest.raises(TypeError, match="generator_fn"):
        data.register_task_kind("broken", "not a function")
    with pytest.raises(ValueError, match="name"):
        data.register_task_kind("", capital)

    data.register_task_kind("mislabelled", capital)
    with pytest.raises(TypeError, match="mislabelled"):
        make_tasks(1, kinds=["mislabelled"])
