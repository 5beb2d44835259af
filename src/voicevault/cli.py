"""The `voicevault` command: one entry point for the operator, the uploader and tools.

Each subcommand's module is imported only when that subcommand runs, so `voicevault
--help` and small commands start fast (boto3 and kopf are slow to import).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Protocol

# exit codes shared by every command
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class Command(Protocol):
    """A subcommand module: registers its arguments, then runs."""

    def configure(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


# name -> (module, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("voicevault.operator.command", "run the operator (reconciles the resources)"),
    "upload": ("voicevault.uploader.upload_command", "upload one recording file to a bucket"),
    "decrypt": ("voicevault.uploader.decrypt_command", "decrypt a downloaded recording object"),
    "retry": ("voicevault.operator.retry_command", "retry Cached recordings (manual retry)"),
    "crds": ("voicevault.crds.command", "print or write the CustomResourceDefinitions"),
    "uploader": ("voicevault.uploader.batch_command", "run a batch (inside an uploader pod)"),
}


def _load(module: str) -> Command:
    loaded: Command = importlib.import_module(module)
    return loaded


def build_parser(load: Callable[[str], Command] = _load) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voicevault",
        description="Store call recordings, encrypted, in the customer's own S3 bucket.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, summary) in COMMANDS.items():
        sub.add_parser(name, help=summary, description=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args_list if not a.startswith("-")), None)
    if command not in COMMANDS:
        parser = build_parser()
        args = parser.parse_args(args_list)
        if args.version:
            from voicevault import package_version

            print(package_version())
            return EXIT_OK
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    module_name, summary = COMMANDS[command]
    module = _load(module_name)
    parser = argparse.ArgumentParser(prog=f"voicevault {command}", description=summary)
    module.configure(parser)
    index = args_list.index(command)
    args = parser.parse_args(args_list[index + 1 :])
    try:
        return module.run(args)
    except KeyboardInterrupt:
        return 130
