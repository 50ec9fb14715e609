"""Test modules share code through tests/helpers/ only: a test module that imports another runs
that module's imports (and pytest may import it a second time under another name), and a
conftest imported as a module is not the one pytest loaded. An AST walk over tests/ keeps it so."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def imported_test_modules(path: Path, root: Path = TESTS.parent) -> list[str]:
    """Modules under ``tests`` that ``path`` imports, other than tests.helpers (relative imports
    included, named by their dots)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = ["." * node.level + (node.module or "")] if node.level else [node.module or ""]
        else:
            continue
        for name in names:
            if name.startswith(".") or (name == "tests" or name.startswith("tests.")) and not (
                    name == "tests.helpers" or name.startswith("tests.helpers.")):
                found.append(f"{path.relative_to(root)}:{node.lineno}: {name}")
    return found


def test_no_test_module_or_conftest_is_imported_by_another():
    offenders = [hit for path in sorted(TESTS.rglob("*.py")) for hit in imported_test_modules(path)]
    assert offenders == [], "import shared test code from tests/helpers/ instead:\n" + "\n".join(offenders)


def test_the_check_sees_the_imports_it_forbids(tmp_path):
    """The walk finds each forbidden form (so an empty list above means none is there)."""
    sample = tmp_path / "test_sample.py"
    source = ("from tests.conftest import tiny_config\nimport tests.unit.test_config\n"
              "from .test_data import x\nfrom tests.helpers.ftl import ROOT\nimport tests.helpers.runs\n"
              "def f():\n    from tests.integration.test_sharding import prepare\n")
    sample.write_text(source)
    hits = imported_test_modules(sample, root=tmp_path)
    assert [h.split(": ", 1)[1] for h in hits] == [
        "tests.conftest", "tests.unit.test_config", ".test_data", "tests.integration.test_sharding"]


def test_no_helper_shadows_a_standard_module():
    """Scripts in tests/helpers/ run under torchrun put that folder first on ``sys.path``: a
    helper named like a standard module (``secrets.py``) would replace it in every library."""
    import sys

    names = {p.stem for p in (TESTS / "helpers").glob("*.py")}
    assert names & set(sys.stdlib_module_names) == set()
