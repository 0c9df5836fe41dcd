"""Packaging: the Python version pyproject declares can run the code."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("common", "client", "server", "deploy", "experiments", "tests")
# Standard-library modules newer than Python 3.8, with the version that added them.
NEW_STDLIB_MODULES: dict[str, tuple[int, int]] = {
    "graphlib": (3, 9),
    "zoneinfo": (3, 9),
    "tomllib": (3, 11),
}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of the modules a source file imports (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def declared_minimum() -> tuple[int, int]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    spec = pyproject["project"]["requires-python"]
    match = re.fullmatch(r"\s*>=\s*(\d+)\.(\d+)\s*", spec)
    assert match, f"requires-python {spec!r} is not of the form '>=3.N'"
    return int(match[1]), int(match[2])


def test_requires_python_provides_every_stdlib_module_the_code_imports() -> None:
    minimum = declared_minimum()
    too_new = {
        f"{path.relative_to(ROOT)} imports {module} (Python {'.'.join(map(str, needs))}+)"
        for directory in SOURCE_DIRS
        for path in sorted((ROOT / directory).rglob("*.py"))
        for module in imported_modules(path)
        if (needs := NEW_STDLIB_MODULES.get(module)) and needs > minimum
    }
    assert not too_new, f"requires-python allows {minimum}, but: {sorted(too_new)}"


def test_ruff_targets_the_declared_minimum_python() -> None:
    major, minor = declared_minimum()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["tool"]["ruff"]["target-version"] == f"py{major}{minor}"
