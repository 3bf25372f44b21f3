"""`cloudctl instance ...`: start (create and place), list, show, stop, reboot, destroy,
migrate and console. Every verb that acts is a job; the CLI follows it unless --no-wait."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from cloudctl.cli.client import ApiClient, CliError
from cloudctl.cli.job import watch_job
from cloudctl.cli.output import print_fields, print_json, print_table

_FIELDS = (
    "name",
    "state",
    "boot",
    "node",
    "memory_mib",
    "vcpus",
    "group",
    "profile",
    "volume",
    "mac",
    "uuid",
)


def register(nouns: argparse._SubParsersAction) -> None:
    parser = nouns.add_parser("instance", help="instances (domUs): start, stop, migrate")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    start = verbs.add_parser(
        "start", help="create (with --memory and --vcpus) and start an instance, or start it again"
    )
    start.add_argument("name")
    start.add_argument("--memory", type=int, metavar="MIB", help="memory in MiB (creates it)")
    start.add_argument("--vcpus", type=int, metavar="N", help="virtual CPUs (creates it)")
    start.add_argument("--node", metavar="HNODE", help="run it on this hardware node")
    start.add_argument("--volume", metavar="VOL", help="its disk: a volume (see `volume list`)")
    start.add_argument("--profile", metavar="P", help="boot profile (default: instance)")
    start.add_argument("--group", help="anti-affinity group: never two members on one node")
    start.add_argument(
        "--boot",
        choices=("pvh", "hvm"),
        help="Xen guest type (default: hypervisor.boot); HVM without a profile image PXE-boots",
    )
    start.add_argument(
        "--dry-run", action="store_true", help="print the candidate nodes and why; change nothing"
    )
    _job_options(start)
    start.set_defaults(run=_start)

    listing = verbs.add_parser("list", help="every instance, and domains nobody expects")
    listing.add_argument("-o", "--output", choices=("text", "json"), default="text")
    listing.set_defaults(run=_list)

    show = verbs.add_parser("show", help="one instance")
    show.add_argument("name")
    show.add_argument("-o", "--output", choices=("text", "json"), default="text")
    show.set_defaults(run=_show)

    for verb, helptext in (
        ("stop", "shut it down (the guest's power button); --force powers it off"),
        ("reboot", "reboot it where it runs"),
        ("destroy", "power it off and forget it (its volume is kept)"),
    ):
        sub = verbs.add_parser(verb, help=helptext)
        sub.add_argument("name")
        if verb == "stop":
            sub.add_argument("--force", action="store_true", help="power off at once")
        _job_options(sub)
        sub.set_defaults(run=_verb, verb=verb)

    migrate = verbs.add_parser("migrate", help="move a running instance live to another node")
    migrate.add_argument("name")
    migrate.add_argument("--to", metavar="HNODE", help="destination (default: the scheduler's)")
    migrate.add_argument(
        "--dry-run", action="store_true", help="print the candidate nodes and why; move nothing"
    )
    _job_options(migrate)
    migrate.set_defaults(run=_migrate)

    console = verbs.add_parser("console", help="attach to its serial console (virsh console)")
    console.add_argument("name")
    console.add_argument(
        "--print", action="store_true", help="print the virsh command instead of running it"
    )
    console.set_defaults(run=_console)


def _job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", help="why; recorded in the audit log")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return")


def _follow(args: argparse.Namespace, client: ApiClient, job: dict) -> int:
    sys.stdout.write(f"job {job['id']} {job['state']}\n")
    sys.stdout.flush()
    return 0 if args.no_wait else watch_job(client, job["id"])


def _print_placement(answer: dict) -> int:
    chosen = answer["node"]
    sys.stdout.write(
        f"{answer['instance']}: {'would run on ' + chosen if chosen else 'no node fits'}"
        f" ({answer['reason']})\n"
    )
    print_table(
        ("NODE", "FITS", "FREE MIB", "FREE VCPUS", "WHY"),
        [
            (
                c["node"],
                "yes" if c["fits"] else "no",
                c["free_memory_mib"],
                c["free_vcpus"],
                c["reason"],
            )
            for c in answer["candidates"]
        ],
    )
    return 0 if chosen else 1


def _start(args: argparse.Namespace, client: ApiClient) -> int:
    if (args.memory is None) != (args.vcpus is None):
        raise CliError("give both --memory and --vcpus to create an instance (or neither)")
    body = {
        "name": args.name,
        "memory_mib": args.memory,
        "vcpus": args.vcpus,
        "node": args.node,
        "volume": args.volume,
        "profile": args.profile,
        "group": args.group,
        "boot": args.boot,
        "reason": args.reason,
        "dry_run": True if args.dry_run else None,
    }
    answer = client.request(
        "POST", "/v1/instances", {k: v for k, v in body.items() if v is not None}
    )
    if args.dry_run:
        return _print_placement(answer)
    return _follow(args, client, answer)


def _list(args: argparse.Namespace, client: ApiClient) -> int:
    answer = client.request("GET", "/v1/instances")
    if args.output == "json":
        print_json(answer)
        return 0
    print_table(
        ("NAME", "STATE", "NODE", "MEMORY", "VCPUS", "GROUP", "VOLUME"),
        [
            (i["name"], i["state"], i["node"], i["memory_mib"], i["vcpus"], i["group"], i["volume"])
            for i in answer["instances"]
        ],
    )
    for found in answer["unexpected"]:
        sys.stdout.write(f"unexpected on {found['node']}: {found['domain']} ({found['detail']})\n")
    return 0


def _show(args: argparse.Namespace, client: ApiClient) -> int:
    instance = client.request("GET", f"/v1/instances/{args.name}")
    if args.output == "json":
        print_json(instance)
    else:
        print_fields(instance, _FIELDS)
    return 0


def _verb(args: argparse.Namespace, client: ApiClient) -> int:
    body: dict = {"reason": args.reason} if args.reason else {}
    if getattr(args, "force", False):
        body["force"] = True
    job = client.request("POST", f"/v1/instances/{args.name}/{args.verb}", body or None)
    return _follow(args, client, job)


def _migrate(args: argparse.Namespace, client: ApiClient) -> int:
    body = {"to": args.to, "reason": args.reason, "dry_run": True if args.dry_run else None}
    answer = client.request(
        "POST",
        f"/v1/instances/{args.name}/migrate",
        {k: v for k, v in body.items() if v is not None} or None,
    )
    if args.dry_run:
        return _print_placement(answer)
    return _follow(args, client, answer)


def _console(args: argparse.Namespace, client: ApiClient) -> int:
    where = client.request("GET", f"/v1/instances/{args.name}/console")
    command = ["virsh", "-c", where["uri"], "console", where["domain"]]
    if args.print:
        sys.stdout.write(" ".join(command) + "\n")
        return 0
    if shutil.which("virsh") is None:
        raise CliError("virsh is not installed here (apt-get install libvirt-clients)")
    sys.stdout.flush()
    os.execvp("virsh", command)
