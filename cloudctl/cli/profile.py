"""`cloudctl profile ...`: what each role boots (image, program, command line); rollback."""

from __future__ import annotations

import argparse

from cloudctl.cli.client import ApiClient
from cloudctl.cli.output import format_time, print_fields, print_json, print_table

ROLES = ("hnode", "snode", "instance", "discovery")
_FIELDS = ("role", "version", "image", "bios_program", "cmdline", "hypervisor_args", "created_at")


def register(nouns: argparse._SubParsersAction) -> None:
    parser = nouns.add_parser("profile", help="boot profiles per role")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    show = verbs.add_parser("show", help="one role's profile and history, or all roles")
    show.add_argument("role", nargs="?", choices=ROLES)
    show.add_argument("-o", "--output", choices=("text", "json"), default="text")
    show.set_defaults(run=_show)

    set_ = verbs.add_parser(
        "set", help="change what a role boots (keeps the old version for rollback)"
    )
    set_.add_argument("role", choices=ROLES)
    set_.add_argument("--image")
    set_.add_argument("--bios-program", choices=("undionly.kpxe", "pxelinux.0"))
    set_.add_argument(
        "--cmdline",
        help="kernel command line; placeholders {name} {mac} {ip} "
        "{server} {domain} {gateway} {netmask} {role} {storage}",
    )
    set_.add_argument("--hypervisor-args", help="Xen command line, for multiboot images")
    set_.add_argument("--reason", help="why; recorded in the audit log")
    set_.add_argument("-o", "--output", choices=("text", "json"), default="text")
    set_.set_defaults(run=_set)

    rollback = verbs.add_parser("rollback", help="go back to the role's previous version")
    rollback.add_argument("role", choices=ROLES)
    rollback.add_argument("--reason", help="why; recorded in the audit log")
    rollback.add_argument("-o", "--output", choices=("text", "json"), default="text")
    rollback.set_defaults(run=_rollback)


def _print(profile: dict, output: str) -> None:
    if output == "json":
        print_json(profile)
    else:
        print_fields(profile, _FIELDS)


def _show(args: argparse.Namespace, client: ApiClient) -> int:
    if args.role is None:
        profiles = client.request("GET", "/v1/profiles")["profiles"]
        if args.output == "json":
            print_json(profiles)
            return 0
        print_table(
            ("ROLE", "VERSION", "IMAGE", "BIOS PROGRAM", "CMDLINE"),
            [
                (p["role"], p["version"], p["image"], p["bios_program"], p["cmdline"])
                for p in profiles
            ],
        )
        return 0
    profile = client.request("GET", f"/v1/profiles/{args.role}")
    if args.output == "json":
        print_json(profile)
        return 0
    print_fields(profile, _FIELDS)
    for old in profile["history"]:
        mark = "*" if old["active"] else " "
        print(f" {mark} v{old['version']}  {format_time(old['created_at'])}  image={old['image']}")
    return 0


def _set(args: argparse.Namespace, client: ApiClient) -> int:
    body = {
        "image": args.image,
        "bios_program": args.bios_program,
        "cmdline": args.cmdline,
        "hypervisor_args": args.hypervisor_args,
        "reason": args.reason,
    }
    body = {key: value for key, value in body.items() if value is not None}
    _print(client.request("POST", f"/v1/profiles/{args.role}", body), args.output)
    return 0


def _rollback(args: argparse.Namespace, client: ApiClient) -> int:
    body = {"reason": args.reason} if args.reason else None
    _print(client.request("POST", f"/v1/profiles/{args.role}/rollback", body), args.output)
    return 0
