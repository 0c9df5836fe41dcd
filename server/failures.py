"""Client failures as a person should read them: the client's own error message, once per
distinct error, with the clients that hit it and how many.

A ClientApp that raises reaches the ServerApp as an error reply (Flower `Message.error`)
whose reason wraps the client's message: in the Simulation Engine in a Ray actor traceback
(colour codes, actor ids, Flower's `ClientAppException` text), in a deployment as
"<class 'module.Error'>:<'message'>". Ten clients with the same bad data file are one error
seen ten times; the full tracebacks stay in flower.log."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Protocol

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
WRAPPED = re.compile(r"<class '(?P<cls>[^']+)'>:<'(?P<body>.*)'>", re.S)
CLIENTAPP_MESSAGE = "ClientAppException occurred. Message: "
ERROR_REPLY = "error reply: "
# The ServerApp's log line when a run fails; the launchers print the failure once, at the end,
# from summary.json, and so leave this line out of what they echo.
RUN_FAILED = "fedmtl | run failed: "
NAMES_SHOWN = 5  # clients named in one line; the rest are counted


class HasReason(Protocol):
    client: str
    reason: str


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def one_line(text: str) -> str:
    return " ".join(text.split())


def client_error(reason: str) -> str:
    """The client's own 'ErrorType: message' inside a Flower error reason, without Ray's or
    Flower's wrappers and colour codes; the reason itself, cleaned, if it wraps nothing."""
    text = strip_ansi(reason).strip()
    match = WRAPPED.fullmatch(text)
    cls, body = (match["cls"], match["body"]) if match else ("", text)
    if CLIENTAPP_MESSAGE in body:  # Ray: the original type is on a traceback line
        message = body.rsplit(CLIENTAPP_MESSAGE, 1)[1].strip()
        name = _raised_type(body, message)
    else:
        message, name = body.strip(), cls.rsplit(".", 1)[-1]
    message = one_line(message)
    return f"{name}: {message}" if name and message else message or name


def _raised_type(traceback: str, message: str) -> str:
    """The short name of the exception whose traceback line ends with `message`."""
    first = message.splitlines()[0] if message else ""
    pattern = re.compile(rf"^\s*([A-Za-z_][\w.]*): {re.escape(first)}", re.M)
    names = [m.group(1).rsplit(".", 1)[-1] for m in pattern.finditer(traceback)]
    names = [n for n in names if n != "ClientAppException"]
    return names[-1] if names else ""


def group_failures(rejections: Iterable[HasReason]) -> list[dict[str, Any]]:
    """One entry per distinct reason, in order of first appearance: the reason, the clients
    that gave it (each once, in order) and their count."""
    groups: dict[str, list[str]] = {}
    for r in rejections:
        clients = groups.setdefault(r.reason, [])
        if r.client not in clients:
            clients.append(r.client)
    return [
        {"error": e, "clients": sorted(c, key=_client_order), "count": len(c)}
        for e, c in groups.items()
    ]


def _client_order(client: str) -> tuple[bool, int, str]:
    """Client ids in numeric order (replies arrive in any order), node names after them."""
    return (not client.isdigit(), int(client) if client.isdigit() else 0, client)


def describe(groups: list[dict[str, Any]]) -> str:
    """'3 clients (0, 1, 2): error reply: ValueError: …; 1 client (4): …'."""
    parts = []
    for g in groups:
        names = g["clients"][:NAMES_SHOWN]
        more = g["count"] - len(names)
        who = ", ".join(names) + (f", +{more} more" if more > 0 else "")
        plural = "client" if g["count"] == 1 else "clients"
        parts.append(f"{g['count']} {plural} ({who}): {g['error']}")
    return "; ".join(parts)
