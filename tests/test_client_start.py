"""What a fresh ClientApp process pays before its handler runs: a deployment starts one per
message, so `client.app` imports only what the handlers use, and the process can say when it
started (the per-message timeline the bench reads)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Imported where they are used: building a dataset that is not cached (scikit-learn,
# flwr-datasets / datasets), plots (matplotlib), DP-SGD (Opacus), CAGrad and Nash-MTL (SciPy).
LAZY = ("sklearn", "matplotlib", "flwr_datasets", "datasets", "opacus", "scipy")

PROBE = """
import json, sys, time
import client.app
print(json.dumps({
    "loaded": sorted(m for m in LAZY if m in sys.modules),
    "start": client.app.PROCESS_START,
    "now": time.time(),
}))
"""


def _probe() -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.replace("LAZY", repr(LAZY))],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_clientapp_loads_none_of_the_lazy_libraries() -> None:
    assert _probe()["loaded"] == []


def test_the_clientapp_knows_when_its_process_started() -> None:
    before = time.time()
    got = _probe()
    # /proc counts in 10 ms ticks and /proc/uptime in 10 ms steps: allow both.
    assert before - 0.05 <= got["start"] <= got["now"]
