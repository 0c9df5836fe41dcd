"""What `fedmtl-run` tells a person: a failed run names each distinct client error once, with
the clients that hit it and their count (on the terminal and in summary.json), without Ray's
or Flower's wrappers, colour codes or actor ids; `--quiet` is short; the final table shows
the test examples behind each task's mean."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import deploy.cli
from common.userdata import UserDataError, load_user_pool
from server.failures import client_error, describe, group_failures
from server.validation import Rejection
from tests.helpers import TINY, engine, user_federation

MESSAGE = (
    "data file 'site.csv', column 'dx' (task 'diagnosis'), row 4 (line 5): "
    "non-numeric value 'seven'"
)
# As Flower 1.42's Simulation Engine builds an error reply's reason: the type of Ray's error,
# then Ray's text with the colour codes, actor id and traceback around Flower's wrapper.
RAY_REASON = (
    "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor."
    "run()\x1b[39m (pid=32509, ip=192.0.2.2, actor_id=06e3c5c8abe89203589fb74a01000000, "
    "repr=<flwr.simulation.ray_transport.ray_actor.ClientAppActor object at 0x7fd15c9aed50>)\n"
    '  File "common/userdata.py", line 451, in _numeric_by_cell\n'
    '    raise UserDataError(f"{where}: non-numeric value {text!r}") from None\n'
    f"common.userdata.UserDataError: {MESSAGE}\n\n"
    "The above exception was the direct cause of the following exception:\n\n"
    "\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=32509, ip=192.0.2.2, actor_id=06e3c5c8abe8)\n"
    "flwr.clientapp.client_app.ClientAppException: \n"
    f"Exception ClientAppException occurred. Message: {MESSAGE}'>"
)
# As a SuperNode builds it in a deployment: "<class 'ZeroDivisionError'>:<'division by zero'>".
DEPLOYMENT_REASON = f"<class 'common.userdata.UserDataError'>:<'{MESSAGE}'>"


@pytest.mark.parametrize("reason", [RAY_REASON, DEPLOYMENT_REASON])
def test_the_clients_own_error_is_taken_out_of_flowers_reason(reason: str) -> None:
    assert client_error(reason) == f"UserDataError: {MESSAGE}"


def test_an_unwrapped_reason_is_kept_without_colour_codes() -> None:
    assert client_error("\x1b[91mno reply\x1b[0m within 5s") == "no reply within 5s"


def test_failures_are_grouped_by_error_with_their_clients_and_count() -> None:
    bad = f"error reply: {client_error(RAY_REASON)}"
    rejected = [Rejection(n, str(n), bad) for n in range(7)] + [Rejection(9, "9", "update norm")]
    groups = group_failures(rejected)
    assert groups == [
        {"error": bad, "clients": [str(n) for n in range(7)], "count": 7},
        {"error": "update norm", "clients": ["9"], "count": 1},
    ]
    line = describe(groups)
    assert line.count(MESSAGE) == 1
    assert line.startswith("7 clients (0, 1, 2, 3, 4, +2 more): error reply: UserDataError:")
    assert line.endswith("; 1 client (9): update norm")


def _run_cli(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> int:
    """`fedmtl-run` as a user runs it, on the session's SuperLink and Ray head (a real Flower
    simulation; only the start of a launcher of its own is saved)."""

    def on_session_engine(overrides: dict[str, Any], *, echo: bool, **_: Any) -> Any:
        return engine().run(overrides, echo=echo, timeout=400)

    monkeypatch.setattr(deploy.cli, "run_simulation", on_session_engine)
    return deploy.cli.main(argv)


def _args(**items: Any) -> list[str]:
    return [a for k, v in items.items() for a in ("-c", f"{k}={v}")]


@pytest.mark.slow
def test_a_malformed_data_file_on_every_client_is_reported_once_with_the_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data, schema = user_federation(tmp_path, bad_cell=(3, "seven"))
    with pytest.raises(UserDataError) as raised:
        load_user_pool(data, schema)
    message = str(raised.value)  # what every client raises: file, column, row, value
    argv = _args(
        **TINY,
        dataset="user",
        **{"data-file": data, "schema-file": schema, "results-dir": tmp_path / "results"},
    )
    assert _run_cli(monkeypatch, argv) == 1
    captured = capsys.readouterr()
    output = captured.out + captured.err
    last = "\n".join(output.splitlines()[-20:])
    assert last.count(message) == 1, output
    clients = TINY["num-clients"]
    assert f"{clients} clients (" in last
    for noise in ("\x1b[", "actor_id", "ray::", "ClientAppException", "RayTaskError"):
        assert noise not in output, f"{noise!r} in the output:\n{output}"

    run_dir = next((tmp_path / "results").iterdir())
    text = (run_dir / "summary.json").read_text()
    assert "\\u001b" not in text and "\x1b" not in text
    summary = json.loads(text)
    assert summary["status"] == "failed"
    assert summary["error"].count(message) == 1 and f"{clients} clients (" in summary["error"]
    assert "actor_id" not in summary["error"] and "ClientAppException" not in summary["error"]
    [group] = summary["client_errors"]
    assert group["count"] == clients and len(set(group["clients"])) == clients
    assert group["error"] == f"error reply: UserDataError: {message}"
    # The full tracebacks stay in flower.log.
    log = (run_dir / "flower.log").read_text()
    assert "Traceback" in log and message in log


@pytest.mark.slow
def test_quiet_output_of_a_default_run_is_short_with_the_test_examples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--quiet", *_args(**TINY, **{"results-dir": tmp_path})]
    assert _run_cli(monkeypatch, argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) <= 15, "\n".join(lines)
    assert lines[0].startswith("fedmtl: ") and lines[-1].startswith("results: ")
    summary = json.loads((Path(lines[-1].split("results: ")[1]) / "summary.json").read_text())
    header = next(line for line in lines if line.startswith("| task |"))
    assert "test examples" in header
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ")}
    for task in summary["per_task"]:
        n = sum(int(t[task]["n"]) for t in summary["per_client"].values() if task in t)
        assert f"| {n:,} (min " in rows[task], (task, n, rows[task])


def _console_scripts() -> dict[str, str]:
    import tomllib

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    return tomllib.loads(pyproject.read_text())["project"]["scripts"]


@pytest.mark.parametrize("script", sorted(_console_scripts()))
def test_every_console_script_says_what_it_does_with_an_example(
    script: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib

    module, func = _console_scripts()[script].split(":")
    with pytest.raises(SystemExit) as done:
        getattr(importlib.import_module(module), func)(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {script} "), text[:200]  # the name the user typed
    assert "example" in text and f"  {script} " in text, f"{script} --help shows no example"
    assert "honest" not in text
