"""The package layout: one home per concept, and the teaching code apart from the machinery."""

from __future__ import annotations

import ast
from pathlib import Path

import llmlab

PACKAGE = Path(llmlab.__file__).parent
MACHINERY = ("checks", "course", "bench")


def _imports(path: Path) -> set[str]:
    """Every llmlab module ``path`` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("llmlab.")}


def test_the_teaching_code_never_imports_the_machinery():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in MACHINERY or rel.name == "__main__.py":
            continue
        for module in _imports(path):
            if module.split(".")[1] in MACHINERY:
                offenders.append(f"{rel} imports {module}")
    assert not offenders, offenders


def test_the_map_in_the_package_docstring_names_every_subpackage():
    homes = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("_")}
    for name in homes | modules:
        assert name in llmlab.__doc__, f"llmlab/{name} is missing from the package map"


def test_lazy_submodules_are_the_homes():
    homes = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("_")}
    assert llmlab._SUBMODULES == homes | modules


def test_the_checkout_is_found_from_the_package():
    """Paths derived from the package's place (the README map, benchmark results, the
    kernels' PYTHONPATH for headless runs) must survive moving a module into a subpackage."""
    from llmlab.course import repo_root
    from llmlab.course.notebooks import _kernel_pythonpath

    root = repo_root()
    assert root is not None and (root / "utils" / "llmlab" / "__init__.py").is_file()
    assert str(root / "utils") in _kernel_pythonpath().split(":")
