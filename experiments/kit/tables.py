"""Markdown tables, written the same way by every report."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def md_row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def md_header(*columns: str) -> list[str]:
    """The header line and the separator line."""
    return [md_row(*columns), md_row(*["---"] * len(columns))]


def md_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    return [*md_header(*header), *(md_row(*row) for row in rows)]
