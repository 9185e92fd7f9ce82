"""The set-up: one lock, a conda file that agrees with it, the two README commands, CI, lint."""

from __future__ import annotations

import re
import subprocess
import sys

import yaml

from llmlab import course


def test_environment_yml_matches_the_lock(root):
    lock = course.read_requirements(root / "requirements.lock")
    spec = yaml.safe_load((root / "environment.yml").read_text())
    deps = spec["dependencies"]
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict))
    pins = [p for p in pip_section if not p.startswith("-e")]
    conda_pins = {}
    for pin in pins:
        name, version = pin.split(";")[0].strip().split("==")
        conda_pins[course.normalize_name(name)] = version.strip()
    assert conda_pins == lock, {
        "only in lock": sorted(set(lock.items()) - set(conda_pins.items())),
        "only in environment.yml": sorted(set(conda_pins.items()) - set(lock.items())),
    }
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    assert python == "python=3.11"


def test_one_python_floor_everywhere(root):
    """pyproject's requires-python is the floor; the Makefile, README, doctor and ruff agree."""
    from llmlab.course.doctor import MIN_PYTHON

    pyproject = (root / "pyproject.toml").read_text()
    floor = re.search(r'requires-python = ">=(\d+)\.(\d+)"', pyproject).groups()
    major, minor = int(floor[0]), int(floor[1])
    assert MIN_PYTHON == (major, minor)
    assert f'target-version = "py{major}{minor}"' in pyproject
    assert f"sys.version_info >= ({major}, {minor})" in (root / "Makefile").read_text()
    assert f"Python {major}.{minor} or newer" in (root / "README.md").read_text()


# Distribution names of the modules llmlab imports, where they differ.
_DISTRIBUTIONS = {
    "sentence_transformers": "sentence-transformers",
    "faiss": "faiss-cpu",
    "rank_bm25": "rank-bm25",
    "langchain_core": "langchain-core",
    "langchain_community": "langchain-community",
    "langchain_huggingface": "langchain-huggingface",
}


def test_every_imported_library_is_declared(root):
    """Each third-party module that utils/llmlab imports is a dependency in pyproject.toml."""
    import ast
    import tomllib

    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    names = {re.split(r"[<>=\[ ;]", d)[0].lower() for d in declared}
    imported = set()
    for path in (root / "utils" / "llmlab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "llmlab"}
    missing = {_DISTRIBUTIONS.get(m, m) for m in third_party} - names
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"


def test_lock_pins_everything_requirements_in_asks_for(root):
    lock = course.read_requirements(root / "requirements.lock")
    assert lock["torch"] == "2.13.0", "torch must stay pinned (an unpinned one pulls CUDA)"
    for raw in (root / "requirements.in").read_text().splitlines():
        name = raw.split("#")[0].split(";")[0].split("==")[0].strip()
        if name:
            assert course.normalize_name(name) in lock, (
                f"{name} is in requirements.in, not the lock"
            )


def test_installed_versions_are_the_locked_ones(root):
    from llmlab.env import package_version

    lock = course.read_requirements(root / "requirements.lock")
    wrong = {
        name: (package_version(name), want)
        for name, want in lock.items()
        if package_version(name) is not None and package_version(name).split("+")[0] != want
    }
    assert not wrong, f"installed != locked: {wrong}"


def test_readme_gives_the_two_commands(root):
    readme = (root / "README.md").read_text()
    assert "make lab" in readme and "make test" in readme
    assert "Colab" in readme and "instructor" in readme.lower()
    assert not course.update_readme(root, check=True), (
        "README's chapter map is out of date: make labs"
    )


def test_ci_runs_the_readme_test_command_offline(root):
    script = (root / ".ci" / "run").read_text()
    assert "make test" in script and "HF_HUB_OFFLINE=1" in script


def test_ruff_is_clean(root):
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "utils", "tests", "tools", "chapters", "solutions"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_is_applied(root):
    """`make lint` formats the Python files; a file it would change fails here."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "format",
            "--check",
            "utils",
            "tests",
            "tools",
            "benchmarks",
        ],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, "run `make lint` (ruff format):\n" + done.stdout + done.stderr
