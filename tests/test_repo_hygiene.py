"""The repository's prose names no machine paths, issue numbers or commits: code and docs are
read by people on other machines, long after the tracker entry that prompted a change.

Prose = Markdown outside code blocks and code spans, Python docstrings and comments, TOML
comments. Code and examples (a path in a config snippet, a fake path in a test) may hold paths.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|home|tmp|Users|root|mnt|scratch)/")
ISSUE = re.compile(r"\b(?:issues?|pull request|PR)\s*#?\s*\d+|(?<![\w&/])#\d+\b", re.IGNORECASE)
COMMIT = re.compile(r"\bcommit\s+[0-9a-f]{7,40}\b", re.IGNORECASE)
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"`[^`\n]*`")


def tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--", "*.py", "*.md", "*.toml"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, f"git ls-files failed in {REPO}: {out.stderr.strip()}"
    return [REPO / name for name in out.stdout.split("\0") if name]


def markdown_prose(text: str) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced blocks, code spans removed."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, CODE_SPAN.sub("", line)))
    return lines


def python_prose(text: str) -> list[tuple[int, str]]:
    """(first line, text) of every docstring and comment."""
    out = []
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None and node.body:
                out.append((node.body[0].lineno, CODE_SPAN.sub("", doc)))
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            out.append((tok.start[0], tok.string))
    return out


def toml_prose(text: str) -> list[tuple[int, str]]:
    """(line number, comment) of every full-line or trailing comment outside a string."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        quoted = False
        for i, ch in enumerate(line):
            if ch == '"':
                quoted = not quoted
            elif ch == "#" and not quoted:
                out.append((number, line[i:]))
                break
    return out


def prose(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        return markdown_prose(text)
    if path.suffix == ".py":
        return python_prose(text)
    return toml_prose(text)


def test_prose_names_no_machine_paths_issues_or_commits() -> None:
    found = []
    for path in tracked_files():
        for line, text in prose(path):
            for what, pattern in (
                ("machine path", MACHINE_PATH),
                ("issue reference", ISSUE),
                ("commit", COMMIT),
            ):
                for match in pattern.finditer(text):
                    at = line + text.count("\n", 0, match.start())
                    found.append(f"{path.relative_to(REPO)}:{at}: {what} {match.group(0)!r}")
    assert not found, "prose that only makes sense on one machine or tracker:\n" + "\n".join(found)


def test_the_scanner_finds_what_it_looks_for() -> None:
    """The patterns catch the forms that were in the tree, and leave code alone."""
    doc = '"""See /work/shared/notes/privacy.md (issue 6.6)."""\nx = "/tmp/x"  # fixes #12\n'
    hits = [(n, t) for n, t in python_prose(doc) if MACHINE_PATH.search(t) or ISSUE.search(t)]
    assert [n for n, _ in hits] == [1, 2]
    md = 'Runs before commit 47ac58f\n```toml\nroot = "/home/me/ca.crt"\n```\n`/tmp/x` ok\n'
    lines = markdown_prose(md)
    assert [n for n, t in lines if COMMIT.search(t)] == [1]
    assert not [t for _, t in lines if MACHINE_PATH.search(t)]
    assert toml_prose('a = "#1"  # Issue 7\n') == [(1, "# Issue 7")]
    assert ISSUE.search("# Issue 7") and not ISSUE.search("issues the server certificate")
