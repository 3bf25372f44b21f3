"""Volume and storage routes, and the storage-node coordination behind maintenance.

Storage nodes run `cloudctl storage serve`, which pulls its exports from here and reports what
it actually exports. Maintenance is checked and recorded atomically by the store (refused while
any volume would lose its last healthy leg); a job then waits for the node's agent to confirm.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from cloudctl.api.base import App, Request, Route, body_string
from cloudctl.httpwire import HttpError
from cloudctl.inventory import InventoryError, parse_size
from cloudctl.jobs import JobContext, JobError, JobKind
from cloudctl.state import Conflict, NotFound, StateStore
from cloudctl.state.store import Change

_VOLUME_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
AGENT_WAIT_SECONDS = 60.0


class StorageCoordinator:
    """What storage nodes last reported exporting, so jobs can wait for them to act."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.reports: dict[str, tuple[float, frozenset[str]]] = {}
        self._changed = asyncio.Event()
        # Set by the daemon: instances move off a storage node's paths before it goes.
        self.hypervisors: Any = None
        self.mover: Any = None

    def report(self, snode: str, devices: frozenset[str]) -> None:
        self.reports[snode] = (time.time(), devices)
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, snode: str, wanted: frozenset[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            event = self._changed
            if snode in self.reports and self.reports[snode][1] == wanted:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(event.wait(), left)
            except TimeoutError:
                return False

    def wanted(self, snode: str) -> frozenset[str]:
        return frozenset(
            f"e{e.shelf}.{e.slot}" for e in self.store.exports_for(snode) if e.exported
        )

    async def _move_instances_first(self, ctx: JobContext, snode: str, moves: list) -> list[str]:
        """Live-migrate the instances that would lose their last storage path, then record the
        maintenance (which the store still refuses if a volume would lose its last leg)."""
        for name, target in moves:
            await ctx.progress(f"{name} would lose its last path to its storage: moving it first")
            await self.mover.migrate(ctx, name, target)
        plan = self.hypervisors.storage_plan(snode)
        if plan.moves or plan.stuck:
            unsafe = [m.instance for m in plan.moves] + [name for name, _ in plan.stuck]
            raise JobError(
                f"instances are still unsafe without {snode}: {', '.join(unsafe)}; "
                "nothing was taken out of service"
            )
        return await self.store.start_storage_maintenance(
            snode, Change(ctx.job.actor, ctx.job.reason)
        )

    async def _maintenance_job(self, ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        snode, entering = params["snode"], params["entering"]
        if params.get("moves"):
            params = {
                **params,
                "volumes": await self._move_instances_first(ctx, snode, params["moves"]),
            }
        wanted = self.wanted(snode)
        verb = "stop exporting" if entering else "export again"
        await ctx.progress(
            f"waiting for {snode}'s storage agent to {verb} {len(params['volumes'])} legs"
        )
        if not await self.wait_until(snode, wanted, params["timeout"]):
            raise JobError(
                f"{snode}'s storage agent did not confirm within {params['timeout']:.0f} s "
                f"(is `cloudctl storage serve` running there?); the maintenance state is recorded"
            )
        if entering:
            await ctx.progress(f"{snode} exports nothing now: it may go down")
        else:
            await ctx.progress(
                f"{snode} exports {len(wanted)} legs again; their mirrors resync on the nodes"
            )
        return {"snode": snode, "volumes": params["volumes"], "exports": sorted(wanted)}

    def job_kind(self) -> JobKind:
        return JobKind("storage-maintenance", lambda params: params, self._maintenance_job)


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
    body = request.fields(required=("name", "size"), optional=("mirror", "on", "reason"))
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
    volume = await app.store.create_volume(name, size, snodes, None, request.change())
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
    exports = app.store.exports_for(snode.name)
    return {
        "snode": snode.name,
        "in_maintenance": snode.name in app.store.storage_in_maintenance(),
        "exports": [e.to_json() for e in exports],
    }


async def storage_report(app: App, request: Request) -> Any:
    body = request.fields(required=("exports",))
    snode = app.find_node(request.path_params["snode"])
    devices = body["exports"]
    if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
        raise HttpError(400, "exports must be a list of eSHELF.SLOT names")
    app.storage.report(snode.name, frozenset(devices))
    return {"snode": snode.name, "wanted": sorted(app.storage.wanted(snode.name))}


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
    }


_VOLUME = {"$ref": "#/components/schemas/Volume"}
_OBJ = {"type": "object"}

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
        "A storage node's agent reports what it exports",
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
        "Volumes, legs, maintenance and agents",
        response_schema=_OBJ,
    ),
)
