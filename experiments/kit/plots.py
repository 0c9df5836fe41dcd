"""Figures of the reports: headless matplotlib, each PNG written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display on the machines that run studies)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path, *, dpi: int = 100, tight: bool = True, bbox: bool = False) -> Path:
    """Write `fig` to `path` (through a temporary file, so a reader never sees half a PNG)
    and close it. `tight`: tight_layout first; `bbox`: crop to the drawn area."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    if tight:
        fig.tight_layout()
    fig.savefig(tmp, dpi=dpi, **({"bbox_inches": "tight"} if bbox else {}))
    pyplot().close(fig)
    tmp.replace(path)
    return path
