"""docs/SECURITY.md section 5 maps every promise to the code that enforces it and the tests
that hold it. Code and tests move and get renamed; this keeps the table from naming a file,
function or test that no longer exists (line numbers are left to the reader: they drift)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTION = "## 5. Promises and the tests that hold them"
SPAN = re.compile(r"`([^`]+)`")
FILE = re.compile(r"^(?P<file>[\w/.-]+\.(?:py|yml))(?:::(?P<name>[\w.]+))?$")
NAME = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?$")


def table_rows() -> list[list[str]]:
    """The cells of every promise row (group headings, with empty cells, left out)."""
    text = (REPO / "docs" / "SECURITY.md").read_text(encoding="utf-8")
    assert SECTION in text, f"docs/SECURITY.md has no section '{SECTION}'"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        header = cells[0] in ("promise", "---")
        if line.startswith("| ") and len(cells) == 3 and all(cells) and not header:
            rows.append(cells)
    return rows


def named(cell: str, root: Path) -> list[tuple[Path, str | None]]:
    """(file, name or None) for every code span of a cell: `file.py::name` opens a file, a
    bare `name` after it is another name in the same file; other spans are prose."""
    out: list[tuple[Path, str | None]] = []
    current: Path | None = None
    for group in cell.split(";"):
        current = None
        for span in SPAN.findall(group):
            if m := FILE.match(span):
                current = root / m["file"]
                out.append((current, m["name"]))
            elif current is not None and NAME.match(span):
                out.append((current, span))
    return out


def defines(path: Path, name: str) -> bool:
    """`name` (or `Class.method`) is defined at any depth in `path`."""
    text = path.read_text(encoding="utf-8")
    return all(
        re.search(rf"^\s*(?:async\s+)?(?:def|class)\s+{part}\b", text, re.MULTILINE)
        for part in name.split(".")
    )


def test_the_table_has_a_row_for_every_topic() -> None:
    rows = table_rows()
    assert len(rows) > 50, len(rows)
    assert all(named(tests, REPO / "tests") for _, _, tests in rows), "a promise without a test"


def test_every_file_function_and_test_the_table_names_exists() -> None:
    missing = []
    for promise, enforced, tests in table_rows():
        for path, name in [*named(enforced, REPO), *named(tests, REPO / "tests")]:
            if not path.exists():
                missing.append(f"{promise}: {path.relative_to(REPO)} does not exist")
            elif name is not None and path.suffix == ".py" and not defines(path, name):
                missing.append(f"{promise}: {path.relative_to(REPO)} defines no {name}")
    assert not missing, "\n".join(missing)
