"""An empirical check of the DP-SGD implementation: a lower bound on ε from one training run
(Steinke, Nasr and Jagielski, NeurIPS 2023), set against the accountant's ε.

The client's real DP-SGD rounds (`client.dp.dp_round`: Opacus, Poisson sampling, per-example
clipping, noise from OS entropy, the RDP accountant) train on its data plus canaries:

- m canaries, each included in the training set with probability 1/2, independently (the
  secret S_i ∈ {−1, +1});
- canary i is an input that is zero except for a feature of its own (value `magnitude`), a
  feature every real example has at 0. Its gradient on the first layer's weights lands in
  that feature's column, which no real example's gradient touches;
- after training, the score of canary i is how far its column moved (‖W_T[:, i] − W_0[:, i]‖):
  what the server can compute from the encoders it sent and received;
- the auditor guesses "included" for the k highest scores (k fixed beforehand) and counts v
  correct guesses.

If the implementation is (ε, δ)-DP, v is unlikely to be large: the number of correct
guesses is dominated by Binomial(k, e^ε / (1 + e^ε)) up to a δ term. ε_lb is the largest ε
that the observed v rejects at confidence 1 − β. A correct implementation gives ε_lb below
the accountant's ε (one run with few canaries is a loose audit, so well below); a broken one
— noise off, as the planted bug does — gives a bound above it.

    python -m experiments.privacy.audit          # writes results/privacy/audit.json and
                                                 # docs/PRIVACY_AUDIT.md
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit
from scipy.stats import binom

from deploy.runs import REPO

RESULTS = REPO / "results" / "privacy" / "audit.json"
DOC = REPO / "docs" / "PRIVACY_AUDIT.md"
BUGS = ("none", "noise-off")


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, beta: float = 0.05) -> float:
    """The largest ε for which v correct guesses out of r (m canaries) reject (ε, δ)-DP at
    significance β (Steinke, Nasr, Jagielski 2023, Theorem for one run); 0 when none is
    rejected. p(ε) = P[Bin(r, q) ≥ v] + 2mδ·max_i P[v−i ≤ Bin(r, q) ≤ v−1] / i, q = expit(ε)."""
    if not (0 <= v <= r <= m and m >= 1 and 0 <= delta <= 1 and 0 < beta < 1):
        raise ValueError(f"need 0 ≤ v ≤ r ≤ m, m ≥ 1, δ in [0, 1], β in (0, 1); got {m, r, v}")
    if r == 0 or v == 0:
        return 0.0

    def p_value(eps: float) -> float:
        q = float(expit(eps))
        tail = float(binom.sf(v - 1, r, q))
        if delta == 0:
            return tail
        below = binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[X = v−1], P[X = v−2], ...
        spread = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
        return min(1.0, tail + 2 * m * delta * spread)

    if p_value(0.0) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(hi) < beta:
        lo, hi = hi, 2 * hi
        if hi > 1e4:
            return math.inf
    return float(brentq(lambda e: p_value(e) - beta, lo, hi, xtol=1e-6))


@dataclass(frozen=True)
class AuditSetup:
    """One audit run: the client's data and DP-SGD settings, the canaries and the guesses."""

    epsilon: float = 3.0
    delta: float = 1e-5
    rounds: int = 2
    samples: int = 300  # real training examples of the client
    canaries: int = 1000
    guesses: int = 200  # k: the k highest scores are guessed "included"
    magnitude: float = 10.0
    beta: float = 0.05
    seed: int = 0


@contextlib.contextmanager
def planted(bug: str) -> Iterator[None]:
    """Run the client's DP-SGD with a deliberate defect (`noise-off`: Opacus is given σ = 0
    while the accountant is told the configured σ), to show that the audit catches it."""
    if bug == "none":
        yield
        return
    if bug != "noise-off":
        raise ValueError(f"unknown planted bug '{bug}'; valid: {list(BUGS)}")
    import client.dp

    real = client.dp.PrivacyEngine

    class Noiseless(real):  # type: ignore[misc, valid-type]
        def make_private(self, **kwargs: Any) -> Any:
            return super().make_private(**{**kwargs, "noise_multiplier": 0.0})

    client.dp.PrivacyEngine = Noiseless
    try:
        yield
    finally:
        client.dp.PrivacyEngine = real


def audit_run(setup: AuditSetup, bug: str = "none") -> dict[str, Any]:
    """Train one client under DP-SGD with the canaries, score them, return ε and ε_lb."""
    import torch

    from client.dp import dp_round
    from client.train import build_model
    from common.config import parse_run_config
    from common.federation import ClientData, Split, load_client_data
    from common.weighting import EqualWeighting

    cfg = parse_run_config(
        {
            "dataset": "synthcorr",
            "num-clients": 2,
            "samples-per-client": setup.samples,
            "privacy": "dp-sgd",
            "dp-epsilon": setup.epsilon,
            "dp-delta": setup.delta,
            "num-server-rounds": setup.rounds,
            "local-epochs": 1,
            "algorithm": "fedavg",
            "seed": setup.seed,
        }
    )
    real = load_client_data(cfg, 0, 2)
    d, m = real.train.x.shape[1], setup.canaries
    rng = np.random.default_rng([setup.seed, 7])
    included = rng.random(m) < 0.5  # S_i = +1
    chosen = np.flatnonzero(included)
    canary_x = np.zeros((len(chosen), d + m), np.float32)
    canary_x[np.arange(len(chosen)), d + chosen] = setup.magnitude
    donors = rng.integers(0, len(real.train), size=len(chosen))  # labels of real examples
    train = Split(
        x=np.concatenate([np.pad(real.train.x, ((0, 0), (0, m))), canary_x]),
        y={t: np.concatenate([y, y[donors]]) for t, y in real.train.y.items()},
    )
    data = ClientData(0, real.tasks, train, real.val, real.test, (d + m,))
    # σ and the sampling rate follow the training set as the client holds it, canaries
    # included: the guarantee is for every example it trains on.
    model = build_model(cfg, data.tasks, (d + m,))
    first = next(p for p in model.parameters() if p.dim() == 2 and p.shape[1] == d + m)
    before = first.detach().clone()
    weighting = EqualWeighting(list(model.tasks))
    history: list = []
    eps = 0.0
    with planted(bug):
        for rnd in range(1, setup.rounds + 1):
            _, history, eps = dp_round(model, data, weighting, cfg, rnd, history)
    moved = (first.detach() - before)[:, d:]
    scores = torch.linalg.vector_norm(moved, dim=0).numpy()
    guessed = np.argsort(-scores, kind="stable")[: setup.guesses]
    correct = int(included[guessed].sum())
    bound = epsilon_lower_bound(m, setup.guesses, correct, setup.delta, setup.beta)
    return {
        **dataclasses.asdict(setup),
        "bug": bug,
        "accountant_epsilon": eps,
        "sigma": history[-1][0],
        "steps": sum(int(h[2]) for h in history),
        "included": int(included.sum()),
        "correct": correct,
        "epsilon_lower_bound": bound,
    }


def run_grid(epsilons: list[float], seeds: list[int], out=print) -> list[dict[str, Any]]:
    rows = []
    for bug in BUGS:
        for eps in epsilons:
            for seed in seeds:
                t0 = time.perf_counter()
                row = audit_run(AuditSetup(epsilon=eps, seed=seed), bug)
                row["seconds"] = time.perf_counter() - t0
                rows.append(row)
                out(
                    f"audit: bug {bug:9s} ε {row['accountant_epsilon']:.2f} seed {seed}: "
                    f"{row['correct']}/{row['guesses']} correct, ε_lb "
                    f"{row['epsilon_lower_bound']:.2f} ({row['seconds']:.0f}s)"
                )
    return rows


def render(rows: list[dict[str, Any]], command: str) -> str:
    from experiments.kit.report import written_by

    first = rows[0]
    lines = [
        "# Empirical privacy audit of DP-SGD",
        "",
        written_by(command),
        "",
        "One training run per row (Steinke, Nasr and Jagielski, NeurIPS 2023): a client trains "
        f"{first['rounds']} rounds of fedmtl's DP-SGD (`client.dp.dp_round`) on "
        f"{first['samples']} SynthCorr examples plus {first['canaries']} canaries, each "
        "included with probability 1/2. A canary is an input that is zero except for a feature "
        "of its own; its score is how far that feature's first-layer weights moved (what the "
        f'server sees). The {first["guesses"]} highest scores are guessed "included"; ε_lb is '
        f"the largest ε that the number of correct guesses rejects at confidence "
        f"{1 - first['beta']:.2f} (δ = {first['delta']:g}). The planted bug `noise-off` gives "
        "Opacus σ = 0 while the accountant counts the configured σ.",
        "",
        "| planted bug | accountant ε | σ | seed | correct guesses | ε lower bound | below ε? |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        below = r["epsilon_lower_bound"] < r["accountant_epsilon"]
        lines.append(
            f"| {r['bug']} | {r['accountant_epsilon']:.2f} | {r['sigma']:.2f} | {r['seed']} | "
            f"{r['correct']}/{r['guesses']} | {r['epsilon_lower_bound']:.2f} | "
            f"{'yes' if below else '**no**'} |"
        )
    honest = [r for r in rows if r["bug"] == "none"]
    broken = [r for r in rows if r["bug"] != "none"]
    ok = all(r["epsilon_lower_bound"] < r["accountant_epsilon"] for r in honest)
    caught = all(r["epsilon_lower_bound"] > r["accountant_epsilon"] for r in broken)
    lines += [
        "",
        f"- Every run of the implementation as it is stays below its accountant's ε: "
        f"**{'yes' if ok else 'no'}** ({len(honest)} runs).",
        f"- Every run with the planted bug goes above it: **{'yes' if caught else 'no'}** "
        f"({len(broken)} runs).",
        "",
        "A bound below ε does not prove the implementation correct (one run with "
        f"{first['canaries']} canaries cannot certify more than about "
        f"{epsilon_lower_bound(first['canaries'], first['guesses'], first['guesses'], first['delta'], first['beta']):.1f}"  # noqa: E501
        " even with every guess right); a bound above ε proves it wrong.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--report-only", action="store_true", help="re-render from --out")
    args = parser.parse_args(argv)
    if args.report_only:
        rows = json.loads(args.out.read_text())
    else:
        rows = run_grid(args.epsilons, args.seeds)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))
    from experiments.kit.report import command, write

    given = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--report-only"]
    write(args.doc, render(rows, command("experiments.privacy.audit", given)))
    print(f"wrote {args.out} and {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
