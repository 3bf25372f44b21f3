"""`cloudctl volume ...`: create, list, show, delete, resize, snapshot, assign volumes."""

from __future__ import annotations

import argparse

from cloudctl.cli.client import ApiClient
from cloudctl.cli.output import print_fields, print_json, print_table


def register(nouns: argparse._SubParsersAction) -> None:
    parser = nouns.add_parser("volume", help="volumes on storage nodes (AoE, mirrored)")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    create = verbs.add_parser("create", help="create a volume (mirrored over two storage nodes)")
    create.add_argument("name")
    create.add_argument("--size", required=True, help="e.g. 4G, 512M")
    where = create.add_mutually_exclusive_group()
    where.add_argument("--mirror", help="SN1,SN2: the two storage nodes (default: least used)")
    where.add_argument("--on", help="one storage node: an unmirrored volume")
    create.add_argument(
        "--from",
        dest="image",
        metavar="IMAGE",
        help="start as a copy of this image's disk (`image import ... --disk`)",
    )
    _common(create, reason=True)
    create.set_defaults(run=_create)

    listing = verbs.add_parser("list", help="list volumes")
    _common(listing)
    listing.set_defaults(run=_list)

    for verb, helptext in (("show", "show a volume"), ("delete", "delete an unassigned volume")):
        sub = verbs.add_parser(verb, help=helptext)
        sub.add_argument("name")
        _common(sub, reason=verb == "delete")
        sub.set_defaults(run=_one, verb=verb)

    resize = verbs.add_parser("resize", help="grow a volume")
    resize.add_argument("name")
    resize.add_argument("--size", required=True)
    _common(resize, reason=True)
    resize.set_defaults(run=_resize)

    snapshot = verbs.add_parser("snapshot", help="a new volume starting as a copy of this one")
    snapshot.add_argument("name")
    snapshot.add_argument("snapshot", help="name of the new volume")
    _common(snapshot, reason=True)
    snapshot.set_defaults(run=_snapshot)

    for verb, helptext in (
        ("assign", "let a node use the volume"),
        ("unassign", "stop letting a node use the volume"),
    ):
        sub = verbs.add_parser(verb, help=helptext)
        sub.add_argument("name")
        sub.add_argument("node")
        _common(sub, reason=True)
        sub.set_defaults(run=_assign, verb=verb)


def _common(parser: argparse.ArgumentParser, *, reason: bool = False) -> None:
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")
    if reason:
        parser.add_argument("--reason", help="why; recorded in the audit log")


def _body(args: argparse.Namespace, **fields: object) -> dict:
    body = {key: value for key, value in fields.items() if value is not None}
    if getattr(args, "reason", None):
        body["reason"] = args.reason
    return body


def print_volume(volume: dict, output: str) -> None:
    if output == "json":
        print_json(volume)
        return
    legs = ", ".join(f"{leg['device']}@{leg['snode']} ({leg['state']})" for leg in volume["legs"])
    print_fields(
        {**volume, "legs": legs, "assigned": ", ".join(volume["assigned"]) or "-"},
        ("name", "size", "mirrored", "legs", "assigned", "origin", "created_at"),
    )


def _create(args: argparse.Namespace, client: ApiClient) -> int:
    mirror = args.mirror.split(",") if args.mirror else None
    body = _body(args, name=args.name, size=args.size, mirror=mirror, on=args.on, image=args.image)
    print_volume(client.request("POST", "/v1/volumes", body), args.output)
    return 0


def _list(args: argparse.Namespace, client: ApiClient) -> int:
    volumes = client.request("GET", "/v1/volumes")["volumes"]
    if args.output == "json":
        print_json(volumes)
        return 0
    print_table(
        ("NAME", "SIZE", "LEGS", "ASSIGNED"),
        [
            (
                v["name"],
                v["size"],
                " ".join(f"{leg['device']}@{leg['snode']}:{leg['state']}" for leg in v["legs"]),
                ",".join(v["assigned"]) or None,
            )
            for v in volumes
        ],
    )
    return 0


def _one(args: argparse.Namespace, client: ApiClient) -> int:
    method = "DELETE" if args.verb == "delete" else "GET"
    print_volume(
        client.request(method, f"/v1/volumes/{args.name}", _body(args) or None), args.output
    )
    return 0


def _resize(args: argparse.Namespace, client: ApiClient) -> int:
    volume = client.request("POST", f"/v1/volumes/{args.name}/resize", _body(args, size=args.size))
    print_volume(volume, args.output)
    return 0


def _snapshot(args: argparse.Namespace, client: ApiClient) -> int:
    body = _body(args, snapshot=args.snapshot)
    print_volume(client.request("POST", f"/v1/volumes/{args.name}/snapshot", body), args.output)
    return 0


def _assign(args: argparse.Namespace, client: ApiClient) -> int:
    body = _body(args, node=args.node)
    print_volume(client.request("POST", f"/v1/volumes/{args.name}/{args.verb}", body), args.output)
    return 0
