"""Combinations the privacy mechanisms cannot account for are refused at start, each with a
message naming what is wrong: heads that would travel without noise (central and local DP),
training outside the DP-SGD accountant, and what SecAgg+ cannot sum. tests/test_dp.py,
tests/test_secagg.py and tests/test_input_validation.py pin one case of each; this pins every
refused value the docs list."""

from __future__ import annotations

from typing import Any

import pytest

from common.config import ConfigError, parse_run_config

REFUSED: list[tuple[dict[str, Any], str]] = [
    # Central and local DP noise the encoder update only: heads must not travel.
    *(
        ({"privacy": privacy, "algorithm": algorithm}, "heads, which would travel without noise")
        for privacy in ("central-dp", "local-dp")
        for algorithm in ("fedavg", "fedavg-ft", "fedrod")
    ),
    # DP-SGD accounts the joint training loop only.
    *(
        ({"privacy": "dp-sgd", "algorithm": algorithm}, "not supported under privacy 'dp-sgd'")
        for algorithm in ("fedavg-ft", "fedrep", "ditto", "fedrod")
    ),
    # SecAgg+ sums the encoder of every client, weighted as FedAvg does.
    *(
        ({"secagg": True, "algorithm": algorithm}, "aggregates the shared encoder only")
        for algorithm in ("fedavg", "fedavg-ft", "fedrod", "local")
    ),
    ({"secagg": True, "privacy": "local-dp"}, "not with privacy 'local-dp'"),
    *(
        (
            {"secagg": True, "privacy": "central-dp", "cdp-clipping": clipping},
            f"cdp-clipping '{clipping}'",
        )
        for clipping in ("fixed-server", "adaptive-server", "adaptive-client")
    ),
    ({"secagg": True, "num-clients": 1, "min-nodes": 1}, "at least 2 clients per round"),
    ({"secagg": True, "compression": "fp16"}, "compression 'fp16'"),
]


@pytest.mark.parametrize(("raw", "needle"), REFUSED, ids=lambda v: str(v))
def test_a_combination_privacy_cannot_account_for_is_refused(raw: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_run_config(raw)


@pytest.mark.parametrize(
    "raw",
    [
        {"privacy": "dp-sgd", "algorithm": "fedavg"},
        {"privacy": "local-dp", "algorithm": "fedrep"},
        {"secagg": True, "algorithm": "ditto"},
        {"secagg": True, "algorithm": "fedper", "privacy": "dp-sgd"},
        {"secagg": True, "privacy": "central-dp", "cdp-clipping": "fixed-client"},
    ],
    ids=lambda v: str(v),
)
def test_the_combinations_the_docs_allow_are_accepted(raw: dict) -> None:
    """The refusals above are not blanket ones: what README and SECURITY.md allow parses."""
    parse_run_config(raw)
