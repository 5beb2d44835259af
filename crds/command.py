"""`voicevault crds`: print, write or check the generated CustomResourceDefinitions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from voicevault.crds import generate


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "With no option, prints all CRDs as one YAML stream (kubectl apply -f -)."
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--write", metavar="DIR", type=Path, nargs="+", help="write one file per kind into each DIR"
    )
    group.add_argument(
        "--check",
        metavar="DIR",
        type=Path,
        nargs="+",
        help="exit 1 if the files in a DIR differ from the models (for CI)",
    )


def run(args: argparse.Namespace) -> int:
    if args.write is not None:
        for directory in args.write:
            for path in generate.write(directory):
                print(path)
        return 0
    if args.check is not None:
        stale = [d / name for d in args.check for name in generate.drifted(d)]
        for path in stale:
            print(
                f"{path} is out of date: run `voicevault crds --write {path.parent}`",
                file=sys.stderr,
            )
        return 1 if stale else 0
    sys.stdout.write(generate.render_all())
    return 0
