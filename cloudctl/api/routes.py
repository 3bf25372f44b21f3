"""Inventory, job, audit, lease and stats routes: JSON in, store and job calls, JSON out."""

from __future__ import annotations

from typing import Any

from cloudctl import __version__
from cloudctl.api.base import App, Request, Route, body_string, int_query
from cloudctl.httpwire import HttpError
from cloudctl.inventory import (
    InventoryError,
    NodeState,
    Role,
    parse_mac,
    parse_name,
    parse_role,
    parse_segment,
)
from cloudctl.state import NotFound
from cloudctl.state.store import NodeRequest


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


def _segment(body: dict) -> str | None:
    segment = body_string(body, "segment")
    return parse_segment(segment) if segment is not None else None


async def add_node(app: App, request: Request) -> Any:
    body = request.fields(required=("mac", "role"), optional=("name", "ip", "segment", "reason"))
    name, ip = body_string(body, "name"), body_string(body, "ip")
    node_request = NodeRequest(
        mac=parse_mac(body_string(body, "mac") or ""),
        role=parse_role(body_string(body, "role") or ""),
        name=parse_name(name) if name is not None else None,
        ip=app.pool.check_fixed(ip) if ip is not None else None,
        segment=_segment(body),
    )
    node = await app.store.add_node(node_request, app.pool, request.change())
    return node.to_json()


async def accept_node(app: App, request: Request) -> Any:
    body = request.fields(required=("role",), optional=("name", "ip", "segment", "reason"))
    mac = parse_mac(request.path_params["mac"])
    name, ip = body_string(body, "name"), body_string(body, "ip")
    node_request = NodeRequest(
        mac=mac,
        role=parse_role(body_string(body, "role") or ""),
        name=parse_name(name) if name is not None else None,
        ip=app.pool.check_fixed(ip) if ip is not None else None,
        segment=_segment(body),
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
    """Mark unschedulable; a hardware node's instances then move away live in one job."""
    request.fields(optional=("reason",))
    node = app.find_node(request.path_params["name"])
    change = request.change()
    drained = (await app.store.set_drained(node.name, True, change)).to_json()
    job = None
    if app.hypervisors is not None and app.store.list_instances(node=node.name):
        job = (await app.runner.submit("node-drain", {"node": node.name}, change)).to_json()
    return {**drained, "job": job}


async def set_segment(app: App, request: Request) -> Any:
    """Move a node to another storage segment (its cabling changed); null: no segment."""
    body = request.fields(required=(), optional=("segment", "reason"))
    node = app.find_node(request.path_params["name"])
    if "segment" not in body:
        raise HttpError(400, "missing field 'segment' (null for none)")
    return (await app.store.set_segment(node.name, _segment(body), request.change())).to_json()


async def undrain_node(app: App, request: Request) -> Any:
    request.fields(optional=("reason",))
    node = app.find_node(request.path_params["name"])
    return (await app.store.set_drained(node.name, False, request.change())).to_json()


async def list_audit(app: App, request: Request) -> Any:
    limit = int_query(request, "limit", 100, 1, 10_000)
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
    limit = int_query(request, "limit", 50, 1, 10_000)
    return {"jobs": [job.to_json() for job in app.store.list_jobs(limit=limit)]}


async def submit_job(app: App, request: Request) -> Any:
    body = request.fields(required=("kind",), optional=("params", "reason"))
    kind = body_string(body, "kind") or ""
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
    after = int_query(request, "after", 0, 0, 2**62)
    wait = int_query(request, "wait", 0, 0, 60)
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
                "segment": {"type": "string"},
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
                "segment": {"type": "string"},
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
        "/v1/nodes/{name}/segment",
        set_segment,
        "Set (or with null, clear) a node's storage segment",
        request_schema={
            "type": "object",
            "properties": {"segment": {"type": ["string", "null"]}, "reason": {"type": "string"}},
        },
        response_schema={"$ref": "#/components/schemas/Node"},
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
