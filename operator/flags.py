"""Command-line flags and VOICEVAULT_* environment defaults, derived from config fields.

A config field that is a setting carries `flag(...)` in its metadata: its flag name, its
environment variable and its help. `add_flags` turns every such field into one flag
whose default is the environment variable, else the field's own default; `build` reads
them back into the config. One place to edit per setting: the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "VOICEVAULT_"
TRUE = ("1", "true", "yes")


@dataclass(frozen=True)
class Flag:
    name: str  # --name
    env: str  # VOICEVAULT_<env>
    help: str | None = None
    group: str = "operation"
    fallback_env: str | None = None  # read when VOICEVAULT_<env> is unset (POD_NAMESPACE)
    parse: Callable[[str], Any] | None = None  # text -> field value, when not by the type

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


def flag(name: str, env: str, help: str | None = None, **more: Any) -> dict[str, Flag]:
    """Field metadata that makes the field a flag."""
    return {"flag": Flag(name, env, help, **more)}


def json_of(kind: type, convert: Callable[[Any], Any] = lambda v: v) -> Callable[[str], Any]:
    """An argparse type: JSON text that must decode to `kind` (a list or a dict)."""

    def parse(text: str) -> Any:
        try:
            value = json.loads(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not JSON: {text[:80]!r}") from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"must be a JSON {kind.__name__}")
        return convert(value)

    return parse


def seconds_up_to(limit: float) -> Callable[[str], float]:
    """An argparse type: a number of seconds from 0 to `limit`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text[:80]!r}") from None
        if not 0 <= value <= limit:
            raise argparse.ArgumentTypeError(f"must be from 0 to {limit:g} seconds")
        return value

    return parse


def _flags(cls: type) -> list[tuple[dataclasses.Field[Any], Flag, Any]]:
    hints = typing.get_type_hints(cls)
    return [
        (f, f.metadata["flag"], hints[f.name])
        for f in dataclasses.fields(cls)
        if "flag" in f.metadata
    ]


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    groups: dict[str, Any],
    environ: Mapping[str, str] = os.environ,
) -> None:
    """One flag per flagged field of `cls`, in the argument group its Flag names."""
    defaults = cls()
    for field, spec, kind in _flags(cls):
        group = groups.get(spec.group) or parser
        env = environ.get(ENV_PREFIX + spec.env)
        if env is None and spec.fallback_env:
            env = environ.get(spec.fallback_env)
        default = getattr(defaults, field.name)
        options: dict[str, Any] = {"dest": spec.dest, "help": spec.help}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
            options["default"] = default if env is None else env.lower() in TRUE
        elif spec.parse is None and typing.get_origin(kind) is tuple:
            # repeatable; the environment gives a comma-separated list
            options["action"] = "append"
            options["default"] = list(default) if env is None else [v for v in env.split(",") if v]
        else:
            options["type"] = spec.parse or _scalar(kind)
            options["default"] = default if env is None else env
        group.add_argument(f"--{spec.name}", **options)


def _scalar(kind: Any) -> Callable[[str], Any]:
    for scalar in (int, float, str):
        if kind is scalar or scalar in typing.get_args(kind):
            return scalar
    raise TypeError(f"no flag type for {kind!r}")


def build(cls: type, args: argparse.Namespace, **others: Any) -> Any:
    """`cls` from the parsed flags of its fields (`others` for fields that are no flag)."""
    values = {}
    for field, spec, kind in _flags(cls):
        value = getattr(args, spec.dest)
        values[field.name] = tuple(value) if typing.get_origin(kind) is tuple else value
    return cls(**values, **others)
