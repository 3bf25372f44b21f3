"""`cloudctl audit list`: who changed what, when, and why."""

from __future__ import annotations

import argparse

from cloudctl.cli.client import ApiClient
from cloudctl.cli.output import format_time, print_json, print_table


def register(nouns: argparse._SubParsersAction) -> None:
    parser = nouns.add_parser("audit", help="the audit log")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    listing = verbs.add_parser("list", help="audit entries, newest first")
    listing.add_argument("--target", help="only entries about this node or job (e.g. hn1, job/3)")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("-o", "--output", choices=("text", "json"), default="text")
    listing.set_defaults(run=_list)


def _list(args: argparse.Namespace, client: ApiClient) -> int:
    entries = client.request(
        "GET", "/v1/audit", query={"target": args.target, "limit": args.limit}
    )["entries"]
    if args.output == "json":
        print_json(entries)
        return 0
    print_table(
        ("WHEN", "WHO", "ACTION", "TARGET", "REASON"),
        [
            (format_time(e["at"]), e["actor"], e["action"], e["target"], e["reason"])
            for e in entries
        ],
    )
    return 0
