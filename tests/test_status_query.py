"""The question "how did run N end?" asked of the SuperLink (`flwr ls`): a query that times
out on a loaded machine is asked again, so a finished run is not counted as failed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from deploy.runs import STATUS_TRIES, flower_status

ANSWER = '{"success": true, "runs": [{"run-id": 7, "status": "finished:completed"}]}'


def fake_flwr(bin_dir: Path, hangs: int) -> Path:
    """A `flwr` on PATH that hangs on its first `hangs` calls, then answers; it counts its
    calls in a file next to it."""
    calls = bin_dir / "calls"
    calls.write_text("0")
    script = bin_dir / "flwr"
    script.write_text(
        "#!/bin/sh\n"
        f'n=$(($(cat "{calls}") + 1)); echo $n > "{calls}"\n'
        f"if [ $n -le {hangs} ]; then exec sleep 600; fi\n"
        f"echo '{ANSWER}'\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return calls


def _env(bin_dir: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_a_status_query_that_times_out_is_asked_again(tmp_path: Path) -> None:
    calls = fake_flwr(tmp_path, hangs=STATUS_TRIES - 1)
    assert flower_status(_env(tmp_path), "fed", "7", timeout=2) == "finished:completed"
    assert calls.read_text().strip() == str(STATUS_TRIES)


def test_a_superlink_that_never_answers_gives_unknown_not_an_exception(tmp_path: Path) -> None:
    calls = fake_flwr(tmp_path, hangs=STATUS_TRIES)
    assert flower_status(_env(tmp_path), "fed", "7", timeout=1) == "unknown"
    assert calls.read_text().strip() == str(STATUS_TRIES)
