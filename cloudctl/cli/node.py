"""`cloudctl node ...`: register, list, show, remove, drain and undrain nodes."""

from __future__ import annotations

import argparse
import sys

from cloudctl.cli.client import ApiClient
from cloudctl.cli.job import watch_job
from cloudctl.cli.output import print_fields, print_json, print_table

_FIELDS = ("name", "mac", "role", "ip", "state", "segment", "created_at", "updated_at")


_SEGMENT_HELP = (
    "storage segment (switch): a hardware node reaches the storage nodes of its segment and "
    "those without one; default: none (reaches all)"
)


def register(nouns: argparse._SubParsersAction) -> None:
    parser = nouns.add_parser("node", help="hardware and storage nodes")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    add = verbs.add_parser("add", help="register a node by its MAC")
    add.add_argument("--mac", required=True)
    add.add_argument("--role", required=True, choices=("hnode", "snode"))
    add.add_argument("--name", help="default: next free hnN / snN")
    add.add_argument("--ip", help="fixed address; default: next free one outside the dynamic range")
    add.add_argument("--segment", help=_SEGMENT_HELP)
    add.add_argument("-o", "--output", choices=("text", "json"), default="text")
    _reason(add)
    add.set_defaults(run=_add)

    accept = verbs.add_parser("accept", help="register a discovered node by its MAC")
    accept.add_argument("mac")
    accept.add_argument("--role", required=True, choices=("hnode", "snode"))
    accept.add_argument("--name", help="default: next free hnN / snN")
    accept.add_argument("--segment", help=_SEGMENT_HELP)
    accept.add_argument(
        "--ip", help="fixed address; default: next free one outside the dynamic range"
    )
    accept.add_argument("-o", "--output", choices=("text", "json"), default="text")
    _reason(accept)
    accept.set_defaults(run=_accept)

    listing = verbs.add_parser("list", help="list nodes")
    listing.add_argument("--role", choices=("hnode", "snode"))
    listing.add_argument("--state", choices=("discovered", "registered", "ready", "drained"))
    listing.add_argument("-o", "--output", choices=("text", "json"), default="text")
    listing.set_defaults(run=_list)

    show = verbs.add_parser("show", help="show one node (by name or MAC)")
    show.add_argument("name")
    show.add_argument("-o", "--output", choices=("text", "json"), default="text")
    show.set_defaults(run=_show)

    for verb, helptext in (
        ("remove", "remove a node from the inventory"),
        ("drain", "mark a node unschedulable; a hardware node's instances move away live"),
        ("undrain", "make a drained node schedulable again"),
    ):
        sub = verbs.add_parser(verb, help=helptext)
        sub.add_argument("name")
        sub.add_argument("-o", "--output", choices=("text", "json"), default="text")
        _reason(sub)
        if verb == "drain":
            sub.add_argument("--no-wait", action="store_true", help="do not follow the moves")
        sub.set_defaults(run=_change, verb=verb)

    segment = verbs.add_parser(
        "segment", help="set a node's storage segment (which storage nodes it reaches)"
    )
    segment.add_argument("name")
    which = segment.add_mutually_exclusive_group(required=True)
    which.add_argument("segment", nargs="?", help="the segment, e.g. rack-a")
    which.add_argument("--clear", action="store_true", help="no segment: reaches every snode")
    segment.add_argument("-o", "--output", choices=("text", "json"), default="text")
    _reason(segment)
    segment.set_defaults(run=_segment)

    failover = verbs.add_parser(
        "failover", help="restart a dead hardware node's instances on other nodes"
    )
    failover.add_argument("name")
    failover.add_argument(
        "--force", action="store_true", help="even if its libvirt still answers (it is broken)"
    )
    _reason(failover)
    failover.add_argument("--no-wait", action="store_true", help="print the job id and return")
    failover.set_defaults(run=_failover)


def _reason(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", help="why; recorded in the audit log")


def _print_node(node: dict, output: str) -> None:
    if output == "json":
        print_json(node)
    else:
        print_fields(node, _FIELDS)


def _add(args: argparse.Namespace, client: ApiClient) -> int:
    body = {
        "mac": args.mac,
        "role": args.role,
        "name": args.name,
        "ip": args.ip,
        "segment": args.segment,
        "reason": args.reason,
    }
    node = client.request("POST", "/v1/nodes", {k: v for k, v in body.items() if v is not None})
    _print_node(node, args.output)
    return 0


def _accept(args: argparse.Namespace, client: ApiClient) -> int:
    body = {
        "role": args.role,
        "name": args.name,
        "ip": args.ip,
        "segment": args.segment,
        "reason": args.reason,
    }
    body = {k: v for k, v in body.items() if v is not None}
    _print_node(client.request("POST", f"/v1/nodes/{args.mac}/accept", body), args.output)
    return 0


def _list(args: argparse.Namespace, client: ApiClient) -> int:
    nodes = client.request("GET", "/v1/nodes", query={"role": args.role, "state": args.state})[
        "nodes"
    ]
    if args.output == "json":
        print_json(nodes)
    else:
        print_table(
            ("NAME", "MAC", "ROLE", "IP", "STATE"),
            [(n["name"], n["mac"], n["role"], n["ip"], n["state"]) for n in nodes],
        )
    return 0


def _show(args: argparse.Namespace, client: ApiClient) -> int:
    _print_node(client.request("GET", f"/v1/nodes/{args.name}"), args.output)
    return 0


def _change(args: argparse.Namespace, client: ApiClient) -> int:
    body = {"reason": args.reason} if args.reason else None
    if args.verb == "remove":
        node = client.request("DELETE", f"/v1/nodes/{args.name}", body)
    else:
        node = client.request("POST", f"/v1/nodes/{args.name}/{args.verb}", body)
    job = node.pop("job", None)
    _print_node(node, args.output)
    if job is not None and args.output == "text":
        sys.stdout.write(f"job {job['id']} {job['state']}: moving its instances away\n")
        sys.stdout.flush()
        if not args.no_wait:
            return watch_job(client, job["id"])
    return 0


def _segment(args: argparse.Namespace, client: ApiClient) -> int:
    body = {"segment": None if args.clear else args.segment}
    if args.reason:
        body["reason"] = args.reason
    _print_node(client.request("POST", f"/v1/nodes/{args.name}/segment", body), args.output)
    return 0


def _failover(args: argparse.Namespace, client: ApiClient) -> int:
    body = {"reason": args.reason, "force": True if args.force else None}
    job = client.request(
        "POST", f"/v1/nodes/{args.name}/failover", {k: v for k, v in body.items() if v} or None
    )
    sys.stdout.write(f"job {job['id']} {job['state']}\n")
    sys.stdout.flush()
    return 0 if args.no_wait else watch_job(client, job["id"])
