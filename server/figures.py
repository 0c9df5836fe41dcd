"""The run's figures (PNG under the results folder): matplotlib without a display, and a
file that is either the whole new figure or the previous one (written beside, then renamed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (imported only when a figure is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, title: str = "") -> None:
    """Title, lay out, write `path` atomically and free the figure."""
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    pyplot().close(fig)
    tmp.replace(path)
