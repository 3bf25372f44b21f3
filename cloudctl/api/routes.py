"""The API's routes as a table, and their handlers: JSON in, store and job calls, JSON out.

Handlers validate input before any write (InventoryError -> 400), let the store decide
conflicts (409) and missing objects (404), and pass the caller's identity and --reason
through so every change is audited. The OpenAPI document is built from this same table.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cloudctl import __version__
from cloudctl.config import Config
from cloudctl.httpwire import HttpError, RequestHead
from cloudctl.inventory import (
    AddressPool,
    InventoryError,
    NodeState,
    Role,
    parse_mac,
    parse_name,
    parse_role,
)
from cloudctl.jobs import JobRunner
from cloudctl.state import Conflict, Node, NotFound, StateError, StateStore
from cloudctl.state.store import Change, NodeRequest


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
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.template)
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


def _string(body: dict, name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise HttpError(400, f"{name} must be a string")
    return value


def _int_query(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.head.query.get(name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise HttpError(400, f"query parameter {name} must be an integer from {low} to {high}")
    return int(text)


async def health(app: App, request: Request) -> Any:
    return {"status": "ok", "version": __version__, "nodes": app.store.count_nodes()}


async def list_nodes(app: App, request: Request) -> Any:
    role = request.head.query.get("role")
    state = request.head.query.get("state")
    try:
        role_filter = parse_role(role) if role else None
        state_filter = NodeState(state) if state else None
    except ValueError as exc:
        raise HttpError(
            400, str(exc) if isinstance(exc, InventoryError) else f"invalid state {state!r}"
        ) from None
    nodes = app.store.list_nodes(role=role_filter, state=state_filter)
    return {"nodes": [node.to_json() for node in nodes]}


async def add_node(app: App, request: Request) -> Any:
    body = request.fields(required=("mac", "role"), optional=("name", "ip", "reason"))
    name, ip = _string(body, "name"), _string(body, "ip")
    node_request = NodeRequest(
        mac=parse_mac(_string(body, "mac") or ""),
        role=parse_role(_string(body, "role") or ""),
        name=parse_name(name) if name is not None else None,
        ip=app.pool.check_fixed(ip) if ip is not None else None,
    )
    node = await app.store.add_node(node_request, app.pool, request.change())
    return node.to_json()


async def accept_node(app: App, request: Request) -> Any:
    body = request.fields(required=("role",), optional=("name", "ip", "reason"))
    mac = parse_mac(request.path_params["mac"])
    name, ip = _string(body, "name"), _string(body, "ip")
    node_request = NodeRequest(
        mac=mac,
        role=parse_role(_string(body, "role") or ""),
        name=parse_name(name) if name is not None else None,
        ip=app.pool.check_fixed(ip) if ip is not None else None,
    )
    return (await app.store.accept_node(mac, node_request, app.pool, request.change())).to_json()


async def service_stats(app: App, request: Request) -> Any:
    return {
        name: counters.as_dict() if hasattr(counters, "as_dict") else dict(counters)
        for name, counters in app.counters.items()
    }


async def list_leases(app: App, request: Request) -> Any:
    return {"leases": [lease.to_json() for lease in app.store.list_leases()]}


async def show_node(app: App, request: Request) -> Any:
    return app.find_node(request.path_params["name"]).to_json()


async def remove_node(app: App, request: Request) -> Any:
    request.fields(optional=("reason",))
    node = app.find_node(request.path_params["name"])
    return (await app.store.remove_node(node.name, request.change())).to_json()


async def drain_node(app: App, request: Request) -> Any:
    request.fields(optional=("reason",))
    node = app.find_node(request.path_params["name"])
    return (await app.store.set_drained(node.name, True, request.change())).to_json()


async def undrain_node(app: App, request: Request) -> Any:
    request.fields(optional=("reason",))
    node = app.find_node(request.path_params["name"])
    return (await app.store.set_drained(node.name, False, request.change())).to_json()


async def list_audit(app: App, request: Request) -> Any:
    limit = _int_query(request, "limit", 100, 1, 10_000)
    entries = app.store.list_audit(target=request.head.query.get("target") or None, limit=limit)
    return {"entries": [entry.to_json() for entry in entries]}


def _job_id(request: Request) -> int:
    text = request.path_params["id"]
    if not text.isdigit():
        raise HttpError(400, f"invalid job id {text!r}")
    return int(text)


def _job_or_404(app: App, job_id: int) -> Any:
    job = app.store.get_job(job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


async def list_jobs(app: App, request: Request) -> Any:
    limit = _int_query(request, "limit", 50, 1, 10_000)
    return {"jobs": [job.to_json() for job in app.store.list_jobs(limit=limit)]}


async def submit_job(app: App, request: Request) -> Any:
    body = request.fields(required=("kind",), optional=("params", "reason"))
    kind = _string(body, "kind") or ""
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise HttpError(400, "params must be a JSON object")
    if kind in app.runner.kinds and not app.runner.kinds[kind].submittable:
        raise HttpError(400, f"jobs of kind {kind!r} are started by their own command")
    try:
        job = await app.runner.submit(kind, params, request.change())
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    return job.to_json()


async def show_job(app: App, request: Request) -> Any:
    job = _job_or_404(app, _job_id(request))
    progress = app.store.job_progress(job.id)
    return {**job.to_json(), "progress": [line.to_json() for line in progress]}


async def job_progress(app: App, request: Request) -> Any:
    job_id = _job_id(request)
    _job_or_404(app, job_id)
    after = _int_query(request, "after", 0, 0, 2**62)
    wait = _int_query(request, "wait", 0, 0, 60)
    if wait:
        await app.runner.wait_for_change(job_id, after, wait)
    job = _job_or_404(app, job_id)
    lines = app.store.job_progress(job_id, after=after)
    return {"job": job.to_json(), "progress": [line.to_json() for line in lines]}


async def cancel_job(app: App, request: Request) -> Any:
    request.fields(optional=("reason",))
    job = await app.runner.cancel(_job_id(request), request.change())
    return job.to_json()


_NODE = {"$ref": "#/components/schemas/Node"}
_JOB = {"$ref": "#/components/schemas/Job"}
_REASON = {"reason": {"type": "string", "description": "why; recorded in the audit log"}}
_REASON_BODY = {"type": "object", "properties": _REASON, "additionalProperties": False}

ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/v1/health",
        health,
        "Daemon liveness and inventory size",
        response_schema={"type": "object"},
    ),
    Route(
        "GET",
        "/v1/nodes",
        list_nodes,
        "List nodes",
        query=("role", "state"),
        response_schema={
            "type": "object",
            "properties": {"nodes": {"type": "array", "items": _NODE}},
        },
    ),
    Route(
        "POST",
        "/v1/nodes",
        add_node,
        "Register a node by MAC; name and IP allocated if omitted",
        request_schema={
            "type": "object",
            "required": ["mac", "role"],
            "properties": {
                "mac": {"type": "string", "example": "52:54:00:12:34:56"},
                "role": {"type": "string", "enum": [r.value for r in Role]},
                "name": {"type": "string"},
                "ip": {"type": "string", "format": "ipv4"},
                **_REASON,
            },
            "additionalProperties": False,
        },
        response_schema=_NODE,
        status=201,
    ),
    Route(
        "POST",
        "/v1/nodes/{mac}/accept",
        accept_node,
        "Register a discovered node (by MAC); name and IP allocated if omitted",
        request_schema={
            "type": "object",
            "required": ["role"],
            "properties": {
                "role": {"type": "string", "enum": [r.value for r in Role]},
                "name": {"type": "string"},
                "ip": {"type": "string", "format": "ipv4"},
                **_REASON,
            },
            "additionalProperties": False,
        },
        response_schema=_NODE,
    ),
    Route(
        "GET",
        "/v1/leases",
        list_leases,
        "DHCP leases (fixed and dynamic), by address",
        response_schema={"type": "object"},
    ),
    Route(
        "GET",
        "/v1/stats",
        service_stats,
        "Packet counters of the protocol servers (received, malformed, offers, acks...)",
        response_schema={"type": "object"},
    ),
    Route(
        "GET", "/v1/nodes/{name}", show_node, "Show a node (by name or MAC)", response_schema=_NODE
    ),
    Route(
        "DELETE",
        "/v1/nodes/{name}",
        remove_node,
        "Remove a node",
        query=("reason",),
        request_schema=_REASON_BODY,
        response_schema=_NODE,
    ),
    Route(
        "POST",
        "/v1/nodes/{name}/drain",
        drain_node,
        "Mark a node unschedulable",
        request_schema=_REASON_BODY,
        response_schema=_NODE,
    ),
    Route(
        "POST",
        "/v1/nodes/{name}/undrain",
        undrain_node,
        "Make a drained node schedulable again",
        request_schema=_REASON_BODY,
        response_schema=_NODE,
    ),
    Route(
        "GET",
        "/v1/audit",
        list_audit,
        "Audit log, newest first",
        query=("target", "limit"),
        response_schema={
            "type": "object",
            "properties": {
                "entries": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEntry"}}
            },
        },
    ),
    Route(
        "GET",
        "/v1/jobs",
        list_jobs,
        "List jobs, newest first",
        query=("limit",),
        response_schema={
            "type": "object",
            "properties": {"jobs": {"type": "array", "items": _JOB}},
        },
    ),
    Route(
        "POST",
        "/v1/jobs",
        submit_job,
        "Start a job of a directly submittable kind",
        request_schema={
            "type": "object",
            "required": ["kind"],
            "properties": {"kind": {"type": "string"}, "params": {"type": "object"}, **_REASON},
            "additionalProperties": False,
        },
        response_schema=_JOB,
        status=202,
    ),
    Route(
        "GET",
        "/v1/jobs/{id}",
        show_job,
        "Show a job with all its progress lines",
        response_schema=_JOB,
    ),
    Route(
        "GET",
        "/v1/jobs/{id}/progress",
        job_progress,
        "Progress lines after a sequence number; long-polls up to `wait` seconds",
        query=("after", "wait"),
        response_schema={"type": "object"},
    ),
    Route(
        "POST",
        "/v1/jobs/{id}/cancel",
        cancel_job,
        "Cancel a running job",
        request_schema=_REASON_BODY,
        response_schema=_JOB,
    ),
)


def match(method: str, path: str) -> tuple[Route, dict[str, str]]:
    allowed = []
    for route in ROUTES:
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
