"""Boot image and profile routes: import/list/remove images; show/set/rollback role profiles."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from cloudctl.api.base import App, Request, Route, body_string
from cloudctl.httpwire import HttpError
from cloudctl.pxe.catalog import ROLES, default_profile
from cloudctl.pxe.images import ImageError, import_files, remove_files
from cloudctl.pxe.render import (
    BIOS_PROGRAMS,
    BootTarget,
    RenderError,
    check_multiboot_fits,
    check_template,
)
from cloudctl.state import Conflict


def _role(request: Request) -> str:
    role = request.path_params["role"]
    if role not in ROLES:
        raise HttpError(400, f"invalid role {role!r}: choose one of {', '.join(ROLES)}")
    return role


async def list_images(app: App, request: Request) -> Any:
    return {"images": [image.to_json() for image in app.store.list_images()]}


async def import_image(app: App, request: Request) -> Any:
    body = request.fields(
        required=("name", "kernel", "initrd"), optional=("hypervisor", "disk", "reason")
    )
    name = body_string(body, "name") or ""
    if app.store.get_image(name) is not None:
        raise Conflict(
            f"an image named {name} already exists (images never change: import under a new name)"
        )
    hypervisor = body_string(body, "hypervisor")
    disk = body_string(body, "disk")
    image_dir = app.config.boot.image_dir
    try:
        image = await asyncio.to_thread(
            import_files,
            image_dir,
            name,
            Path(body_string(body, "kernel") or ""),
            Path(body_string(body, "initrd") or ""),
            Path(hypervisor) if hypervisor else None,
            Path(disk) if disk else None,
        )
    except ImageError as exc:
        raise HttpError(400, str(exc)) from None
    try:
        return (await app.store.add_image(image, request.change())).to_json()
    except Exception:
        remove_files(image_dir, name)
        raise


async def remove_image(app: App, request: Request) -> Any:
    request.fields(optional=("reason",))
    image = await app.store.remove_image(request.path_params["name"], request.change())
    remove_files(app.config.boot.image_dir, image.name)
    return image.to_json()


async def list_profiles(app: App, request: Request) -> Any:
    profiles = [app.store.get_profile(role) or default_profile(role) for role in ROLES]
    return {"profiles": [profile.to_json() for profile in profiles]}


async def show_profile(app: App, request: Request) -> Any:
    role = _role(request)
    current = app.store.get_profile(role) or default_profile(role)
    history = [p.to_json() for p in app.store.profile_history(role)]
    return {**current.to_json(), "history": history}


async def set_profile(app: App, request: Request) -> Any:
    role = _role(request)
    body = request.fields(
        optional=("image", "bios_program", "cmdline", "hypervisor_args", "reason")
    )
    current = app.store.get_profile(role) or default_profile(role)
    image = body_string(body, "image")
    bios_program = body_string(body, "bios_program") or current.bios_program
    if bios_program not in BIOS_PROGRAMS:
        raise HttpError(
            400, f"invalid bios_program {bios_program!r}: choose one of {', '.join(BIOS_PROGRAMS)}"
        )
    try:
        cmdline = check_template(body_string(body, "cmdline") or current.cmdline, "cmdline")
        hypervisor_args = check_template(
            body_string(body, "hypervisor_args")
            if "hypervisor_args" in body
            else current.hypervisor_args,
            "hypervisor_args",
        )
    except RenderError as exc:
        raise HttpError(400, str(exc)) from None
    chosen = image if "image" in body else current.image
    if bios_program != "pxelinux.0" and chosen is not None:
        image_record = app.store.get_image(chosen)
        if image_record is not None and image_record.multiboot:
            try:
                check_multiboot_fits(_longest_target(app, role, chosen, cmdline, hypervisor_args))
            except RenderError as exc:
                raise HttpError(400, str(exc)) from None
    profile = await app.store.set_profile(
        role,
        image=chosen,
        bios_program=bios_program,
        cmdline=cmdline,
        hypervisor_args=hypervisor_args or "",
        change=request.change(),
    )
    return profile.to_json()


def _longest_target(
    app: App, role: str, image: str, cmdline: str, hypervisor_args: str
) -> BootTarget:
    """The node whose rendered lines would be longest: placeholders at their longest."""
    net = app.config.network
    return BootTarget(
        name="n" * 63,
        mac="aa:bb:cc:dd:ee:ff",
        ip="255.255.255.255",
        role=role,
        server=str(net.server),
        http_port=app.config.boot.http_port,
        domain=net.domain,
        gateway=str(net.gateway),
        netmask=str(net.subnet.netmask),
        image=image,
        multiboot=True,
        cmdline=cmdline,
        hypervisor_args=hypervisor_args,
    )


async def rollback_profile(app: App, request: Request) -> Any:
    request.fields(optional=("reason",))
    return (await app.store.rollback_profile(_role(request), request.change())).to_json()


_PROFILE = {"$ref": "#/components/schemas/Profile"}
_IMAGE = {"$ref": "#/components/schemas/Image"}
_REASON = {"reason": {"type": "string", "description": "why; recorded in the audit log"}}

ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/images", list_images, "List boot images", response_schema={"type": "object"}),
    Route(
        "POST",
        "/v1/images",
        import_image,
        "Import a kernel, initramfs and optional hypervisor (paths on the config node)",
        request_schema={
            "type": "object",
            "required": ["name", "kernel", "initrd"],
            "properties": {
                "name": {"type": "string"},
                "kernel": {"type": "string"},
                "initrd": {"type": "string"},
                "hypervisor": {"type": "string", "description": "xen.gz for multiboot"},
                **_REASON,
            },
            "additionalProperties": False,
        },
        response_schema=_IMAGE,
        status=201,
    ),
    Route(
        "DELETE",
        "/v1/images/{name}",
        remove_image,
        "Remove an image no profile uses",
        response_schema=_IMAGE,
    ),
    Route(
        "GET",
        "/v1/profiles",
        list_profiles,
        "The active boot profile of every role",
        response_schema={"type": "object"},
    ),
    Route(
        "GET",
        "/v1/profiles/{role}",
        show_profile,
        "A role's profile with its history",
        response_schema=_PROFILE,
    ),
    Route(
        "POST",
        "/v1/profiles/{role}",
        set_profile,
        "Set what a role boots (a new version; unspecified fields keep their value)",
        request_schema={
            "type": "object",
            "properties": {
                "image": {"type": ["string", "null"]},
                "bios_program": {"type": "string", "enum": list(BIOS_PROGRAMS)},
                "cmdline": {"type": "string"},
                "hypervisor_args": {"type": "string"},
                **_REASON,
            },
            "additionalProperties": False,
        },
        response_schema=_PROFILE,
    ),
    Route(
        "POST",
        "/v1/profiles/{role}/rollback",
        rollback_profile,
        "Activate the version before the active one",
        response_schema=_PROFILE,
    ),
)
