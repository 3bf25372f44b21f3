"""`cloudctl job ...`: list, show, watch and cancel jobs; `job test` runs a harmless one."""

from __future__ import annotations

import argparse
import sys

from cloudctl.cli.client import ApiClient
from cloudctl.cli.output import format_time, print_fields, print_json, print_table

_FIELDS = (
    "id",
    "kind",
    "state",
    "actor",
    "reason",
    "created_at",
    "started_at",
    "finished_at",
    "error",
    "result",
)
_WAIT_SECONDS = 20


def register(nouns: argparse._SubParsersAction) -> None:
    parser = nouns.add_parser("job", help="long operations: progress, watch, cancel")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    listing = verbs.add_parser("list", help="jobs, newest first")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("-o", "--output", choices=("text", "json"), default="text")
    listing.set_defaults(run=_list)

    show = verbs.add_parser("show", help="one job with its progress lines")
    show.add_argument("id", type=int)
    show.add_argument("-o", "--output", choices=("text", "json"), default="text")
    show.set_defaults(run=_show)

    watch = verbs.add_parser(
        "watch", help="follow a job's progress until it ends (exit 0 only if it succeeded)"
    )
    watch.add_argument("id", type=int)
    watch.set_defaults(run=_watch)

    cancel = verbs.add_parser("cancel", help="cancel a running job")
    cancel.add_argument("id", type=int)
    cancel.add_argument("--reason", help="why; recorded in the audit log")
    cancel.set_defaults(run=_cancel)

    test = verbs.add_parser("test", help="start a job that only counts, to check the job machinery")
    test.add_argument("--steps", type=int, default=5)
    test.add_argument("--interval", type=float, default=1.0, help="seconds between steps")
    test.add_argument("--fail-at", type=int, help="fail on this step")
    test.add_argument("--watch", action="store_true", help="follow it until it ends")
    test.add_argument("--reason", help="why; recorded in the audit log")
    test.set_defaults(run=_test)


def _list(args: argparse.Namespace, client: ApiClient) -> int:
    jobs = client.request("GET", "/v1/jobs", query={"limit": args.limit})["jobs"]
    if args.output == "json":
        print_json(jobs)
        return 0
    print_table(
        ("ID", "KIND", "STATE", "ACTOR", "CREATED", "REASON"),
        [
            (j["id"], j["kind"], j["state"], j["actor"], format_time(j["created_at"]), j["reason"])
            for j in jobs
        ],
    )
    return 0


def _show(args: argparse.Namespace, client: ApiClient) -> int:
    job = client.request("GET", f"/v1/jobs/{args.id}")
    if args.output == "json":
        print_json(job)
        return 0
    print_fields(job, _FIELDS)
    for line in job["progress"]:
        sys.stdout.write(f"  {format_time(line['at'])}  {line['line']}\n")
    return 0


def watch_job(client: ApiClient, job_id: int) -> int:
    """Print progress lines as they come; return 0 if the job succeeded, else 1."""
    after = 0
    while True:
        answer = client.request(
            "GET", f"/v1/jobs/{job_id}/progress", query={"after": after, "wait": _WAIT_SECONDS}
        )
        for line in answer["progress"]:
            sys.stdout.write(f"{format_time(line['at'])}  {line['line']}\n")
            after = line["seq"]
        sys.stdout.flush()
        job = answer["job"]
        if job["state"] in ("succeeded", "failed", "cancelled") and not answer["progress"]:
            break
    detail = f": {job['error']}" if job["error"] else ""
    sys.stdout.write(f"job {job_id} {job['state']}{detail}\n")
    return 0 if job["state"] == "succeeded" else 1


def _watch(args: argparse.Namespace, client: ApiClient) -> int:
    return watch_job(client, args.id)


def _cancel(args: argparse.Namespace, client: ApiClient) -> int:
    body = {"reason": args.reason} if args.reason else None
    job = client.request("POST", f"/v1/jobs/{args.id}/cancel", body)
    sys.stdout.write(f"job {job['id']} {job['state']}\n")
    return 0


def _test(args: argparse.Namespace, client: ApiClient) -> int:
    params = {"steps": args.steps, "interval": args.interval}
    if args.fail_at is not None:
        params["fail_at"] = args.fail_at
    body = {"kind": "test", "params": params}
    if args.reason:
        body["reason"] = args.reason
    job = client.request("POST", "/v1/jobs", body)
    sys.stdout.write(f"job {job['id']} {job['state']}\n")
    if args.watch:
        return watch_job(client, job["id"])
    return 0
