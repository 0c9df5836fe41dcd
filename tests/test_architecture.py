"""Who may import whom: the product never imports the studies, and tests never import conftest.

The rooms (server/, client/, common/, deploy/, experiments/, tests/) may import as the table
in the architecture notes says. Imports are read with `ast` from every module's source, those
inside functions included (a lazy import is still a dependency), as are relative imports and
`importlib.import_module("...")` / `__import__("...")` with a literal name.
"""

from __future__ import annotations

import ast
import importlib
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"common", "client", "server", "deploy", "experiments", "tests"}
# What each room of the product may import of ours (third-party packages are not limited).
MAY_IMPORT = {
    "common": {"common"},
    "client": {"client", "common"},
    "server": {"server", "common"},
    "deploy": {"deploy", "common", "client", "server"},
}


def modules(room: str, root: Path = REPO) -> list[Path]:
    return sorted(p for p in (root / room).rglob("*.py") if "__pycache__" not in p.parts)


def imported(path: Path, root: Path = REPO) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in the file at `path` (for `from m
    import n`: `m`, and `m.n` in case n is a module)."""
    package = list(path.relative_to(root).parent.parts)
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level > len(package):
                    raise AssertionError(f"{path}:{node.lineno}: relative import above the room")
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield node.lineno, module
            # `from tests import conftest` imports the module tests.conftest.
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"
        elif (
            isinstance(node, ast.Call)
            and _called_name(node.func) in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def _called_name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def offending(room: str, bad: Callable[[str], bool], root: Path = REPO) -> list[str]:
    """'path:line imports module' for the imports in `room` for which `bad(module)` holds,
    one per line."""
    found: dict[tuple[Path, int], str] = {}
    for path in modules(room, root):
        for line, name in imported(path, root):
            if bad(name):
                found.setdefault((path.relative_to(root), line), name)
    return [f"{path}:{line} imports {name}" for (path, line), name in sorted(found.items())]


def forbidden_imports(room: str, root: Path = REPO) -> list[str]:
    """The imports of ours that `room` may not make."""
    return offending(room, lambda name: name.split(".")[0] in FIRST_PARTY - MAY_IMPORT[room], root)


@pytest.mark.parametrize("room", sorted(MAY_IMPORT))
def test_the_product_imports_only_the_rooms_below_it(room: str) -> None:
    """In particular, no product module imports `experiments` (the studies) or `tests`."""
    assert modules(room), f"no modules found under {room}/"
    bad = forbidden_imports(room)
    assert not bad, f"{room}/ may import only {sorted(MAY_IMPORT[room])} of ours:\n" + "\n".join(
        bad
    )


def test_no_test_module_imports_conftest() -> None:
    """pytest loads conftest.py as a module of its own; importing it again as
    `tests.conftest` makes a second copy (and, once, a second simulation engine). Shared
    helpers live in tests/helpers.py."""
    bad = offending(
        "tests", lambda name: name.split(".")[:2] in (["conftest"], ["tests", "conftest"])
    )
    assert not bad, "import from tests.helpers instead:\n" + "\n".join(bad)


def test_the_import_reader_sees_lazy_relative_and_dynamic_imports(tmp_path: Path) -> None:
    """The reader the two tests above rely on, on a module that hides its imports."""
    (tmp_path / "deploy").mkdir()
    probe = tmp_path / "deploy" / "probe.py"
    probe.write_text(
        "import importlib\n"
        "def f():\n"
        "    from experiments.compare import main\n"
        "    return importlib.import_module('experiments.robustness')\n"
        "from . import local\n"
        "from tests import conftest\n"
    )
    found = {name for _, name in imported(probe, tmp_path)}
    assert {"experiments.compare", "experiments.robustness", "deploy.local"} <= found
    assert "tests.conftest" in found
    assert forbidden_imports("deploy", tmp_path) == [
        "deploy/probe.py:3 imports experiments.compare",
        "deploy/probe.py:4 imports experiments.robustness",
        "deploy/probe.py:6 imports tests",
    ]


def test_console_scripts_resolve_and_running_the_app_is_product_code() -> None:
    """Every `[project.scripts]` entry names a function that exists; the commands that run
    the app (not the studies, e.g. `fedmtl-compare`) live in the product."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr, None)), (name, target)
    for name in ("fedmtl-run", "fedmtl-deploy", "fedmtl-certs"):
        room = scripts[name].split(".")[0]
        assert room in MAY_IMPORT, f"{name} = {scripts[name]}: not in the product"
