"""Volume and storage routes, and the storage-node coordination behind maintenance.

Storage nodes run `cloudctl storage serve`, which pulls its exports from here and reports what
it actually exports (and its DRBD devices' state where it runs DRBD). Maintenance is checked and
recorded atomically by the store (refused while any volume would lose its last healthy leg); a
job then waits for the node's agent to confirm.
"""

from __future__ import annotations

import re
from typing import Any

from cloudctl.aoe.drbdreport import status_to_json, statuses_from_json
from cloudctl.aoe.mirror import MirrorError
from cloudctl.api.base import App, Request, Route, body_string
from cloudctl.httpwire import HttpError
from cloudctl.inventory import InventoryError, parse_size
from cloudctl.maintenance import AGENT_WAIT_SECONDS
from cloudctl.state import Conflict, NotFound

_VOLUME_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def _volume_name(text: str | None) -> str:
    if not text or not _VOLUME_NAME.match(text) or ".." in text:
        raise HttpError(
            400,
            f"invalid volume name {text!r}: use 1-63 lower-case letters, digits, '.', '_' and '-'",
        )
    return text


def _size(text: Any) -> int:
    try:
        return parse_size(str(text))
    except InventoryError as exc:
        raise HttpError(400, str(exc)) from None


def _place(app: App, count: int) -> list[str]:
    """The `count` storage nodes with the least allocated bytes, not in maintenance."""
    busy = set(app.store.storage_in_maintenance())
    load: dict[str, int] = {
        n.name: 0
        for n in app.store.list_nodes()
        if n.role and n.role.value == "snode" and n.name not in busy
    }
    for volume in app.store.list_volumes():
        for leg in volume.legs:
            if leg.snode in load:
                load[leg.snode] += volume.size
    if len(load) < count:
        raise HttpError(
            409,
            f"a mirrored volume needs {count} storage nodes; "
            f"{len(load)} available (registered and not in maintenance)",
        )
    return sorted(load, key=lambda name: (load[name], name))[:count]


async def list_volumes(app: App, request: Request) -> Any:
    return {"volumes": [v.to_json() for v in app.store.list_volumes()]}


async def create_volume(app: App, request: Request) -> Any:
    body = request.fields(required=("name", "size"), optional=("mirror", "on", "image", "reason"))
    name, size = _volume_name(body_string(body, "name")), _size(body.get("size"))
    mirror, on = body.get("mirror"), body_string(body, "on")
    if mirror is not None and on is not None:
        raise HttpError(400, "give either mirror (two storage nodes) or on (one), not both")
    if mirror is not None:
        if not isinstance(mirror, list) or len(mirror) != 2 or len(set(mirror)) != 2:
            raise HttpError(400, "mirror must name two different storage nodes")
        snodes = [str(s) for s in mirror]
    elif on is not None:
        snodes = [on]
    else:
        snodes = _place(app, 2)
    image = body_string(body, "image")
    volume = await app.store.create_volume(name, size, snodes, None, request.change(), image=image)
    return volume.to_json()


def _volume_or_404(app: App, name: str) -> Any:
    volume = app.store.get_volume(name)
    if volume is None:
        raise NotFound(f"no volume named {name!r}")
    return volume


async def show_volume(app: App, request: Request) -> Any:
    return _volume_or_404(app, request.path_params["name"]).to_json()


async def delete_volume(app: App, request: Request) -> Any:
    request.fields(optional=("reason",))
    return (await app.store.remove_volume(request.path_params["name"], request.change())).to_json()


async def resize_volume(app: App, request: Request) -> Any:
    body = request.fields(required=("size",), optional=("reason",))
    volume = await app.store.resize_volume(
        request.path_params["name"], _size(body["size"]), request.change()
    )
    return volume.to_json()


async def snapshot_volume(app: App, request: Request) -> Any:
    body = request.fields(required=("snapshot",), optional=("reason",))
    origin = _volume_or_404(app, request.path_params["name"])
    snap = await app.store.create_volume(
        _volume_name(body_string(body, "snapshot")),
        origin.size,
        [leg.snode for leg in origin.legs],
        origin.name,
        request.change(),
    )
    return snap.to_json()


async def assign_volume(app: App, request: Request) -> Any:
    body = request.fields(required=("node",), optional=("reason",))
    assign = request.path_params["verb"] == "assign"
    node = app.find_node(body_string(body, "node") or "")
    volume = await app.store.assign_volume(
        request.path_params["name"], node.name, assign, request.change()
    )
    return volume.to_json()


async def storage_exports(app: App, request: Request) -> Any:
    snode = app.find_node(request.path_params["snode"])
    return app.storage.exports_json(snode.name)


async def storage_report(app: App, request: Request) -> Any:
    """What the node exports; "drbd": its DRBD devices, null without DRBD, absent: no news
    (agents before DRBD reporting, or a reading that failed: the last state stays)."""
    body = request.fields(required=("exports",), optional=("drbd",))
    snode = app.find_node(request.path_params["snode"])
    devices = body["exports"]
    if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
        raise HttpError(400, "exports must be a list of eSHELF.SLOT names")
    drbd = None
    if body.get("drbd") is not None:
        try:
            drbd = statuses_from_json(body["drbd"])
        except MirrorError as exc:
            raise HttpError(400, str(exc)) from None
    app.storage.report(snode.name, frozenset(devices))
    if "drbd" in body:
        app.storage.report_drbd(snode.name, drbd)
    return {"snode": snode.name, "wanted": sorted(app.storage.wanted(snode.name))}


async def mirror_report(app: App, request: Request) -> Any:
    """A node's mirror agent reports its arrays; the answer is the node's mirrored volumes."""
    body = request.fields(required=("arrays",))
    node = app.find_node(request.path_params["node"])
    arrays = body["arrays"]
    if not isinstance(arrays, list) or not all(
        isinstance(a, dict)
        and isinstance(a.get("volume"), str)
        and isinstance(a.get("members", {}), dict)
        for a in arrays
    ):
        raise HttpError(400, "arrays must be a list of objects with volume and members")
    await app.storage.mirror_report(node.name, arrays)
    return {
        "volumes": [app.storage.served_view(v) for v in app.store.volumes_assigned_to(node.name)]
    }


async def maintenance(app: App, request: Request) -> Any:
    body = request.fields(optional=("reason", "timeout"))
    snode = app.find_node(request.path_params["snode"]).name
    entering = request.path_params["verb"] == "start"
    timeout = body.get("timeout", AGENT_WAIT_SECONDS)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
        raise HttpError(400, "timeout must be a number of seconds from 1 to 3600")
    change = request.change()
    moves: list[list[str]] = []
    if entering and app.storage.hypervisors is not None:
        plan = app.storage.hypervisors.storage_plan(snode)
        if plan.stuck:
            why = "; ".join(f"{name}: {reason}" for name, reason in plan.stuck)
            raise Conflict(f"{snode} cannot go: instances would lose their storage: {why}")
        moves = [[m.instance, m.target] for m in plan.moves]
    if moves:
        volumes: list[str] = []  # the job records the maintenance once the instances are safe
    elif entering:
        volumes = await app.store.start_storage_maintenance(snode, change)
    else:
        volumes = await app.store.finish_storage_maintenance(snode, change)
    params = {
        "snode": snode,
        "entering": entering,
        "volumes": volumes,
        "timeout": float(timeout),
        "moves": moves,
    }
    return (await app.runner.submit("storage-maintenance", params, change)).to_json()


async def storage_status(app: App, request: Request) -> Any:
    return {
        "in_maintenance": app.store.storage_in_maintenance(),
        "agents": {
            snode: {"reported_at": at, "exports": sorted(devices)}
            for snode, (at, devices) in app.storage.reports.items()
        },
        "volumes": [v.to_json() for v in app.store.list_volumes()],
        "mirrors": {
            node: {"reported_at": at, "arrays": list(arrays.values())}
            for node, (at, arrays) in app.storage.mirrors.items()
        },
        "drbd": {
            snode: {"reported_at": at, "resources": [status_to_json(d) for d in devices]}
            for snode, (at, devices) in sorted(app.storage.drbd.items())
        },
    }


_VOLUME = {"$ref": "#/components/schemas/Volume"}
_OBJ = {"type": "object"}
_DRBD = {"type": "array", "items": {"$ref": "#/components/schemas/DrbdDevice"}}

ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/volumes", list_volumes, "List volumes", response_schema=_OBJ),
    Route(
        "POST",
        "/v1/volumes",
        create_volume,
        "Create a volume: mirrored over two storage nodes unless `on` names one",
        request_schema={
            "type": "object",
            "required": ["name", "size"],
            "properties": {
                "name": {"type": "string"},
                "size": {"type": ["string", "integer"]},
                "mirror": {"type": "array", "items": {"type": "string"}},
                "on": {"type": "string"},
                "image": {"type": "string", "description": "start as a copy of its disk"},
                "reason": {"type": "string"},
            },
        },
        response_schema=_VOLUME,
        status=201,
    ),
    Route("GET", "/v1/volumes/{name}", show_volume, "Show a volume", response_schema=_VOLUME),
    Route(
        "DELETE",
        "/v1/volumes/{name}",
        delete_volume,
        "Delete an unassigned volume",
        response_schema=_VOLUME,
    ),
    Route(
        "POST", "/v1/volumes/{name}/resize", resize_volume, "Grow a volume", response_schema=_VOLUME
    ),
    Route(
        "POST",
        "/v1/volumes/{name}/snapshot",
        snapshot_volume,
        "A new volume whose legs start as copies of this one's",
        response_schema=_VOLUME,
        status=201,
    ),
    Route(
        "POST",
        "/v1/volumes/{name}/{verb:assign|unassign}",
        assign_volume,
        "Allow (or stop allowing) a node to use the volume: the exports' MAC list",
        response_schema=_VOLUME,
    ),
    Route(
        "GET",
        "/v1/storage/{snode}/exports",
        storage_exports,
        "What a storage node must export now (its agent polls this)",
        response_schema=_OBJ,
    ),
    Route(
        "POST",
        "/v1/storage/{snode}/report",
        storage_report,
        "A storage node's agent reports what it exports, and its DRBD devices",
        request_schema={
            "type": "object",
            "required": ["exports"],
            "properties": {
                "exports": {"type": "array", "items": {"type": "string"}},
                "drbd": {
                    **_DRBD,
                    "type": ["array", "null"],
                    "description": "this node's DRBD devices; null: DRBD is not loaded here; "
                    "absent: no news (the last report stays)",
                },
            },
        },
        response_schema=_OBJ,
    ),
    Route(
        "POST",
        "/v1/storage/mirrors/{node}",
        mirror_report,
        "A node's mirror agent reports its md arrays; answers with its mirrored volumes",
        response_schema=_OBJ,
    ),
    Route(
        "POST",
        "/v1/storage/{snode}/maintenance/{verb:start|finish}",
        maintenance,
        "Take a storage node out of service (or back); a job waits for its agent",
        response_schema={"$ref": "#/components/schemas/Job"},
        status=202,
    ),
    Route(
        "GET",
        "/v1/storage",
        storage_status,
        "Volumes, legs, maintenance, agents, nodes' md arrays and storage nodes' DRBD devices",
        response_schema={
            "type": "object",
            "properties": {
                "in_maintenance": {"type": "array", "items": {"type": "string"}},
                "agents": _OBJ,
                "volumes": {"type": "array", "items": _VOLUME},
                "mirrors": _OBJ,
                "drbd": {
                    "type": "object",
                    "description": "storage node -> its agent's last DRBD report",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {"reported_at": {"type": "number"}, "resources": _DRBD},
                    },
                },
            },
        },
    ),
)
