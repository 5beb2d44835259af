"""`voicevault crds`: print, write or check the generated CustomResourceDefinitions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from voicevault.crds import generate


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "With no option, prints all CRDs as one YAML stream (kubectl apply -f -)."
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="DIR", type=Path, help="write one file per kind into DIR")
    group.add_argument(
        "--check",
        metavar="DIR",
        type=Path,
        help="exit 1 if the files in DIR differ from the models (for CI)",
    )


def run(args: argparse.Namespace) -> int:
    if args.write is not None:
        for path in generate.write(args.write):
            print(path)
        return 0
    if args.check is not None:
        stale = generate.drifted(args.check)
        for name in stale:
            print(
                f"{args.check / name} is out of date: run `voicevault crds --write {args.check}`",
                file=sys.stderr,
            )
        return 1 if stale else 0
    sys.stdout.write(generate.render_all())
    return 0
