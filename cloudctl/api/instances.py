"""Instance routes: start (create + place), stop, reboot, destroy, migrate, console; node
failover; and the hardware nodes as libvirt sees them.

Input is checked and the instance record written before a job is queued, so a bad name, size
or volume is a 400/404/409 at once; what needs libvirt runs as a job with progress.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from typing import Any

from cloudctl.api.base import Answer, App, Request, Route, body_string
from cloudctl.httpwire import HttpError
from cloudctl.jobs import JobError, JobKind
from cloudctl.pxe.catalog import ROLES
from cloudctl.state import Conflict, NotFound
from cloudctl.state.models import Instance, InstanceState

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_GROUP = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
# Locally administered OUIs the hypervisors use for their guests.
_MAC_PREFIX = {"xen": "00:16:3e", "qemu": "52:54:00"}
MAX_MEMORY_MIB = 4 * 1024 * 1024
MAX_VCPUS = 128


def _hypervisors(app: App) -> Any:
    if app.hypervisors is None:
        raise HttpError(503, "instances are not available: cloudctld runs without hypervisors")
    return app.hypervisors


def _name(text: Any) -> str:
    if not isinstance(text, str) or not _NAME.match(text):
        raise HttpError(
            400,
            f"invalid instance name {text!r}: 1-63 lower-case letters, digits and '-', "
            "starting with a letter (it becomes a DNS label and a libvirt domain name)",
        )
    return text


def _whole(body: dict, key: str, low: int, high: int) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise HttpError(400, f"{key} must be a whole number from {low} to {high}, got {value!r}")
    return value


def _instance(app: App, name: str) -> Instance:
    instance = app.store.get_instance(name)
    if instance is None:
        raise NotFound(f"no instance named {name!r}")
    return instance


def _new_instance(app: App, body: dict) -> Instance:
    name = _name(body.get("name"))
    group = body_string(body, "group")
    if group is not None and not _GROUP.match(group):
        raise HttpError(400, f"invalid group {group!r}: 1-63 lower-case letters, digits, . _ -")
    profile = body_string(body, "profile") or "instance"
    if profile not in ROLES:
        raise HttpError(400, f"unknown profile {profile!r}: choose one of {', '.join(ROLES)}")
    boot = body_string(body, "boot")
    if boot is not None and boot not in ("pvh", "hvm"):
        raise HttpError(400, f"boot must be pvh or hvm, got {boot!r}")
    volume = body_string(body, "volume")
    if volume is not None and app.store.get_volume(volume) is None:
        raise NotFound(f"no volume named {volume!r}")
    prefix = _MAC_PREFIX[app.config.hypervisor.flavour]
    mac = prefix + "".join(f":{b:02x}" for b in secrets.token_bytes(3))
    now = time.time()
    return Instance(
        name=name,
        uuid=str(uuid.uuid4()),
        mac=mac,
        memory_mib=_whole(body, "memory_mib", 16, MAX_MEMORY_MIB),
        vcpus=_whole(body, "vcpus", 1, MAX_VCPUS),
        node=None,
        state=InstanceState.STOPPED,
        group=group,
        profile=profile,
        volume=volume,
        created_at=now,
        updated_at=now,
        boot=boot,
    )


def _placement_json(placement: Any) -> dict[str, Any]:
    return {
        "node": placement.host,
        "reason": placement.reason,
        "candidates": [
            {
                "node": c.host,
                "fits": c.fits,
                "verdict": c.verdict.value,
                "reason": c.reason,
                "free_memory_mib": c.free_memory_mib,
                "free_vcpus": c.free_vcpus,
            }
            for c in placement.candidates
        ],
    }


async def start_instance(app: App, request: Request) -> Any:
    """Create (when memory_mib and vcpus are given) and start; dry_run only explains."""
    hv = _hypervisors(app)
    body = request.fields(
        required=("name",),
        optional=(
            "memory_mib",
            "vcpus",
            "node",
            "volume",
            "profile",
            "group",
            "boot",
            "dry_run",
            "reason",
        ),
    )
    name = _name(body.get("name"))
    node = body_string(body, "node")
    existing = app.store.get_instance(name)
    creating = body.get("memory_mib") is not None or body.get("vcpus") is not None
    if existing is not None and creating:
        raise Conflict(f"an instance named {name} already exists: `instance start {name}` alone")
    if existing is None and not creating:
        raise NotFound(f"no instance named {name!r}: give --memory and --vcpus to create it")
    instance = existing or _new_instance(app, body)
    if body.get("dry_run"):
        if node is not None:
            app.find_node(node)
        return _dry_run(hv, instance, node)
    if existing is None:
        instance = await app.store.create_instance(instance, request.change())
    params = {"name": instance.name, "node": node}
    return (await app.runner.submit("instance-start", params, request.change())).to_json()


def _dry_run(hv: Any, instance: Instance, node: str | None, source: str | None = None) -> Answer:
    """The placement explained, with 200: a dry run starts no job."""
    try:
        placement = hv.place(instance, node, source=source)
    except JobError as exc:
        raise HttpError(404, str(exc)) from None
    return Answer(200, {"dry_run": True, "instance": instance.name, **_placement_json(placement)})


async def instance_verb(app: App, request: Request) -> Any:
    _hypervisors(app)
    verb = request.path_params["verb"]
    body = request.fields(optional=("reason", "force"))
    instance = _instance(app, request.path_params["name"])
    params: dict[str, Any] = {"name": instance.name}
    if verb == "stop":
        params["force"] = bool(body.get("force"))
    return (await app.runner.submit(f"instance-{verb}", params, request.change())).to_json()


async def migrate_instance(app: App, request: Request) -> Any:
    hv = _hypervisors(app)
    body = request.fields(optional=("to", "reason", "dry_run"))
    instance = _instance(app, request.path_params["name"])
    to = body_string(body, "to")
    if to is not None:
        app.find_node(to)
    if instance.state is not InstanceState.RUNNING:
        raise Conflict(f"{instance.name} is {instance.state.value}; only running instances migrate")
    if body.get("dry_run"):
        return _dry_run(hv, instance, to, source=instance.node)
    params = {"name": instance.name, "to": to}
    return (await app.runner.submit("instance-migrate", params, request.change())).to_json()


async def list_instances(app: App, request: Request) -> Any:
    reconciler = app.reconciler
    unexpected = [] if reconciler is None else list(reconciler.unexpected.values())
    return {
        "instances": [i.to_json() for i in app.store.list_instances()],
        "unexpected": [
            {"node": f.node, "domain": f.domain, "detail": f.detail} for f in unexpected
        ],
    }


async def show_instance(app: App, request: Request) -> Any:
    return _instance(app, request.path_params["name"]).to_json()


async def instance_console(app: App, request: Request) -> Any:
    hv = _hypervisors(app)
    instance = _instance(app, request.path_params["name"])
    if instance.node is None or instance.state is InstanceState.STOPPED:
        raise Conflict(f"{instance.name} is {instance.state.value}: no console to attach to")
    link = hv.link(instance.node)
    return {"name": instance.name, "node": instance.node, "uri": link.uri, "domain": instance.name}


async def list_hosts(app: App, request: Request) -> Any:
    hv = _hypervisors(app)
    snapshot = hv.snapshot()
    hosts = []
    for host in snapshot.hosts:
        link = hv.pool.links.get(host.name)
        hosts.append(
            {
                "node": host.name,
                "uri": link.uri if link else None,
                "reachable": host.reachable,
                "error": link.error if link else "not polled yet",
                "drained": host.drained,
                "hypervisor": link.info.hypervisor if link and link.info else None,
                "memory_mib": host.memory_mib,
                "vcpus": host.vcpus,
                "free_memory_mib": snapshot.free_memory_mib(host.name),
                "free_vcpus": snapshot.free_vcpus(host.name),
                "instances": [i.name for i in snapshot.instances_on(host.name)],
            }
        )
    return {"hosts": hosts, "policy": app.config.hypervisor.policy}


async def failover_node(app: App, request: Request) -> Any:
    _hypervisors(app)
    body = request.fields(optional=("reason", "force"))
    node = app.find_node(request.path_params["name"])
    if node.role is None or node.role.value != "hnode":
        raise HttpError(400, f"{node.name} is not a hardware node")
    params = {"node": node.name, "force": bool(body.get("force"))}
    return (await app.runner.submit("node-failover", params, request.change())).to_json()


def job_kinds(hv: Any, mover: Any) -> list[JobKind]:
    same = lambda params: params  # noqa: E731 - checked by the route before submitting
    return [
        JobKind("instance-start", same, hv.start_job),
        JobKind("instance-stop", same, hv.stop_job),
        JobKind("instance-reboot", same, hv.reboot_job),
        JobKind("instance-destroy", same, hv.destroy_job),
        JobKind("instance-migrate", same, mover.migrate_job),
        JobKind("node-drain", same, mover.drain_job),
        JobKind("node-failover", same, mover.failover_job),
    ]


_OBJ = {"type": "object"}
_JOB = {"$ref": "#/components/schemas/Job"}

ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/v1/instances",
        list_instances,
        "Instances, and domains found where the store does not expect them",
        response_schema=_OBJ,
    ),
    Route(
        "POST",
        "/v1/instances",
        start_instance,
        "Create (with memory_mib and vcpus) and start an instance; dry_run explains placement",
        request_schema={
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "memory_mib": {"type": "integer"},
                "vcpus": {"type": "integer"},
                "node": {"type": "string"},
                "volume": {"type": "string"},
                "profile": {"type": "string"},
                "group": {"type": "string"},
                "boot": {"type": "string", "enum": ["pvh", "hvm"]},
                "dry_run": {"type": "boolean"},
                "reason": {"type": "string"},
            },
        },
        response_schema=_JOB,
        status=202,
    ),
    Route("GET", "/v1/instances/{name}", show_instance, "Show an instance", response_schema=_OBJ),
    Route(
        "POST",
        "/v1/instances/{name}/{verb:stop|reboot|destroy}",
        instance_verb,
        "Stop (shut down; force: power off), reboot, or destroy (power off and forget)",
        response_schema=_JOB,
        status=202,
    ),
    Route(
        "POST",
        "/v1/instances/{name}/migrate",
        migrate_instance,
        "Live-migrate a running instance (to: a hardware node; else the scheduler chooses)",
        response_schema=_JOB,
        status=202,
    ),
    Route(
        "GET",
        "/v1/instances/{name}/console",
        instance_console,
        "Where the instance's console is: its node's libvirt URI and domain name",
        response_schema=_OBJ,
    ),
    Route(
        "GET",
        "/v1/hosts",
        list_hosts,
        "Hardware nodes as their libvirt reports them: reachability, capacity, instances",
        response_schema=_OBJ,
    ),
    Route(
        "POST",
        "/v1/nodes/{name}/failover",
        failover_node,
        "Restart a dead hardware node's instances on other nodes",
        response_schema=_JOB,
        status=202,
    ),
)
