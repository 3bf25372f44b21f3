"""What every API handler works with: the request, the route record, the app, error mapping.

Handlers validate input before any write (InventoryError -> 400), let the store decide
conflicts (409) and missing objects (404), and pass the caller's identity and --reason
through so every change is audited.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cloudctl.config import Config
from cloudctl.httpwire import HttpError, RequestHead
from cloudctl.inventory import AddressPool, InventoryError, parse_mac
from cloudctl.jobs import JobRunner
from cloudctl.state import Conflict, Node, NotFound, StateError, StateStore
from cloudctl.state.store import Change


@dataclass(frozen=True)
class Request:
    head: RequestHead
    path_params: dict[str, str]
    body: Any
    actor: str

    def fields(self, *, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> dict:
        body = self.body if self.body is not None else {}
        if not isinstance(body, dict):
            raise HttpError(400, "the request body must be a JSON object")
        unknown = sorted(set(body) - set(required) - set(optional))
        if unknown:
            raise HttpError(400, f"unknown field {unknown[0]!r}")
        for name in required:
            if body.get(name) is None:
                raise HttpError(400, f"missing field {name!r}")
        return body

    def change(self) -> Change:
        reason = None
        if isinstance(self.body, dict):
            reason = self.body.get("reason")
        reason = reason if reason is not None else self.head.query.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise HttpError(400, "reason must be a string")
        return Change(actor=self.actor, reason=reason or None)


@dataclass(frozen=True)
class Answer:
    """A handler's reply with a status other than its route's (a dry run that starts no job)."""

    status: int
    body: Any


Handler = Callable[["App", Request], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    handler: Handler
    summary: str
    request_schema: dict | None = None
    response_schema: dict = field(default_factory=dict)
    query: tuple[str, ...] = ()
    status: int = 200
    pattern: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # {name} matches one path segment; {verb:start|finish} only the listed words.
        regex = re.sub(
            r"\{(\w+)(?::([^}]+))?\}",
            lambda m: f"(?P<{m[1]}>{m[2] or '[^/]+'})",
            self.template,
        )
        object.__setattr__(self, "pattern", re.compile(f"^{regex}$"))


class App:
    """Everything a handler may use."""

    def __init__(self, config: Config, store: StateStore, runner: JobRunner) -> None:
        self.config = config
        self.store = store
        self.runner = runner
        self.pool = AddressPool.from_network(config.network)
        # Protocol servers register their packet counters here, by service name.
        self.counters: dict[str, Any] = {}
        self.storage: Any = None  # the StorageCoordinator, set by the daemon
        self.hypervisors: Any = None  # xen.lifecycle.Hypervisors, set by the daemon
        self.reconciler: Any = None  # xen.reconcile.Reconciler, set by the daemon

    def find_node(self, key: str) -> Node:
        node = self.store.get_node(key)
        if node is None:
            try:
                node = self.store.node_by_mac(parse_mac(key))
            except InventoryError:
                node = None
        if node is None:
            raise NotFound(f"no node named {key!r}")
        return node


def body_string(body: dict, name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise HttpError(400, f"{name} must be a string")
    return value


def int_query(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.head.query.get(name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise HttpError(400, f"query parameter {name} must be an integer from {low} to {high}")
    return int(text)


def match(routes: Sequence[Route], method: str, path: str) -> tuple[Route, dict[str, str]]:
    allowed = []
    for route in routes:
        found = route.pattern.match(path)
        if found:
            if route.method == method:
                return route, found.groupdict()
            allowed.append(route.method)
    if allowed:
        raise HttpError(405, f"{method} is not allowed on {path}; use {', '.join(allowed)}")
    raise HttpError(404, f"no such API path {path}")


def error_status(exc: Exception) -> int | None:
    """The HTTP status for an error a handler raised on purpose, or None for a bug."""
    if isinstance(exc, HttpError):
        return exc.status
    if isinstance(exc, InventoryError):
        return 400
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, StateError):
        return 503
    return None
