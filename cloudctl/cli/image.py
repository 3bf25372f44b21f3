"""`cloudctl image ...`: import, list and remove boot images (kernel + initramfs [+ Xen])."""

from __future__ import annotations

import argparse
from pathlib import Path

from cloudctl.cli.client import ApiClient
from cloudctl.cli.output import format_time, print_json, print_table


def register(nouns: argparse._SubParsersAction) -> None:
    parser = nouns.add_parser("image", help="boot images")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    imp = verbs.add_parser("import", help="import a kernel + initramfs under a name")
    imp.add_argument("name")
    imp.add_argument("--kernel", required=True, type=Path)
    imp.add_argument("--initrd", required=True, type=Path)
    imp.add_argument("--hypervisor", type=Path, help="xen.gz: boot the kernel as Xen's dom0")
    imp.add_argument(
        "--disk", type=Path, help="a raw root-disk image: `volume create --from` starts from it"
    )
    imp.add_argument("--reason", help="why; recorded in the audit log")
    imp.add_argument("-o", "--output", choices=("text", "json"), default="text")
    imp.set_defaults(run=_import)

    listing = verbs.add_parser("list", help="list images")
    listing.add_argument("-o", "--output", choices=("text", "json"), default="text")
    listing.set_defaults(run=_list)

    remove = verbs.add_parser("remove", help="remove an image no profile uses")
    remove.add_argument("name")
    remove.add_argument("--reason", help="why; recorded in the audit log")
    remove.set_defaults(run=_remove)


def _import(args: argparse.Namespace, client: ApiClient) -> int:
    body = {
        "name": args.name,
        # The daemon reads the files: send absolute paths of this machine.
        "kernel": str(args.kernel.resolve()),
        "initrd": str(args.initrd.resolve()),
    }
    if args.hypervisor:
        body["hypervisor"] = str(args.hypervisor.resolve())
    if args.disk:
        body["disk"] = str(args.disk.resolve())
    if args.reason:
        body["reason"] = args.reason
    image = client.request("POST", "/v1/images", body)
    if args.output == "json":
        print_json(image)
    else:
        kind = "multiboot (Xen)" if image["multiboot"] else "kernel + initrd"
        if image["disk_size"] is not None:
            kind += f" + a {image['disk_size']}-byte disk"
        print(f"imported {image['name']}: {kind}, {image['size']} bytes")
    return 0


def _list(args: argparse.Namespace, client: ApiClient) -> int:
    images = client.request("GET", "/v1/images")["images"]
    if args.output == "json":
        print_json(images)
        return 0
    print_table(
        ("NAME", "KIND", "SIZE", "KERNEL SHA256", "IMPORTED"),
        [
            (
                i["name"],
                "xen" if i["multiboot"] else "linux",
                i["size"],
                i["kernel_sha256"][:16],
                format_time(i["created_at"]),
            )
            for i in images
        ],
    )
    return 0


def _remove(args: argparse.Namespace, client: ApiClient) -> int:
    body = {"reason": args.reason} if args.reason else None
    image = client.request("DELETE", f"/v1/images/{args.name}", body)
    print(f"removed {image['name']}")
    return 0
