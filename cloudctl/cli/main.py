"""`cloudctl NOUN VERB ...`: parse arguments, find the daemon, dispatch to the noun's module.

Every failure ends as one line on stderr and a non-zero exit: 2 for a bad command line,
1 for anything the daemon refused or could not do.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from cloudctl import __version__
from cloudctl.cli import aoe, audit, image, instance, job, node, profile, storage, volume
from cloudctl.cli.client import ApiClient, CliError
from cloudctl.config import DEFAULT_API_SOCKET, ConfigError, default_config_path, load_config

EXIT_FAILED = 1
EXIT_USAGE = 2
NOUNS = (node, instance, image, profile, volume, storage, aoe, job, audit)


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; operators asked for just the error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="cloudctl", description="Operate a diskless network-boot cloud.")
    parser.add_argument(
        "--config",
        type=Path,
        help="config file (default: $CLOUDCTL_CONFIG or /etc/cloudctl/cloudctl.yaml)",
    )
    parser.add_argument(
        "--api",
        help="daemon address: a Unix socket path or http://HOST:PORT (overrides the config)",
    )
    parser.add_argument("--version", action="version", version=f"cloudctl {__version__}")
    nouns = parser.add_subparsers(
        dest="noun", metavar="NOUN", required=True, parser_class=OneLineParser
    )
    for module in NOUNS:
        module.register(nouns)
    return parser


def _client(args: argparse.Namespace) -> ApiClient:
    token = os.environ.get("CLOUDCTL_TOKEN")
    config_path = args.config or default_config_path()
    config = None
    if args.config is not None or config_path.exists():
        config = load_config(config_path)
    if args.api:
        where = args.api
        if token is None and config is not None and config.api.tcp is not None:
            token = config.api.tcp.token
    else:
        where = str(config.api.socket if config else DEFAULT_API_SOCKET)
    return ApiClient(where, token=token)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        client = _client(args)
        try:
            return args.run(args, client) or 0
        finally:
            client.close()
    except (CliError, ConfigError) as exc:
        sys.stderr.write(f"cloudctl: error: {exc}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: not an error, and nothing more to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
