"""What an uploader pod's process does first, for a cheap start (#19): `begin`, called
by importing `voicevault.uploader.podstart` before anything else. Its start is paid per
pod.

Two package bodies are deferred, which cost it about 30 ms of CPU without ever being
used there:
- `botocore.docs` and its `docstring` module bring in botocore's whole documentation
  generator (ReST writer, HTML parser, shape and example printers), only to attach lazy
  docstrings to client methods, which nothing in a pod reads;
- `urllib3.http2` imports `importlib.metadata` (zipfile, csv, tempfile...) for
  `inject_into_urllib3`, which only HTTP/2 users call; urllib3 itself loads its `probe`
  submodule only.

A finder on `sys.meta_path` gives each, when it is imported, a module of its real file
whose body has not run yet, with its real `__path__`, so its submodules import as usual.
Its body runs the first time an attribute it does not have yet, and that names no
submodule, is read: any later user (boto3's resource docs, an HTTP/2 opt-in) gets the
real module. Client methods' docstrings stay empty in that process (botocore.client took
the placeholder class). Nothing changes for a package imported before this module.

And the cyclic garbage collector waits until the first S3 client is made
(`s3client.make_client` calls `started`): the imports and botocore's S3 model are some
60,000 container objects that all stay, and collecting young objects about 90 times
while they were made cost about 20 ms. Then what exists is frozen (never scanned again:
later collections look at the batch's own objects; the cycles that were garbage by
then stay: about 600 objects, 120 KiB, where a full collection to free them would cost
25 ms) and the usual thresholds apply again. Until then the collector still runs, only
rarely.
"""

from __future__ import annotations

import gc
import importlib
import importlib.machinery
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from importlib.abc import Loader

DOCSTRING_MODULE = "botocore.docs.docstring"
# the names botocore.client and botocore.waiter import from it at their own import
DOCSTRING_CLASSES = ("ClientMethodDocstring", "PaginatorDocstring", "WaiterDocstring")
DEFERRED = ("botocore.docs", DOCSTRING_MODULE, "urllib3.http2")
# young objects between collections while starting (the usual is 700)
START_THRESHOLD = 100_000
_paused: list[tuple[int, ...]] = []  # the usual thresholds, while paused


class _NoDocstring(str):
    """An empty docstring, taking whatever botocore passes to its lazy ones."""

    def __new__(cls, *_: Any, **__: Any) -> _NoDocstring:
        return super().__new__(cls, "")


class _DeferredLoader:
    """Runs the real loader's `exec_module` at the first missing attribute read.
    (Neither this nor the finder derives from `importlib.abc`: importing it costs 7 ms.)"""

    def __init__(self, real: importlib.machinery.SourceFileLoader) -> None:
        self.real = real

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default module

    def exec_module(self, module: ModuleType) -> None:
        name = module.__name__
        folder = Path(self.real.path).parent
        package = hasattr(module, "__path__")
        ran = False

        def run_body(attribute: str) -> Any:
            nonlocal ran
            if package and _is_submodule(folder, attribute):
                # `from package import submodule` asks for it as an attribute first
                return importlib.import_module(f"{name}.{attribute}")
            if ran or attribute.startswith("__"):
                raise AttributeError(f"module {name!r} has no attribute {attribute!r}")
            ran = True
            del module.__dict__["__getattr__"]
            self.real.exec_module(module)
            return getattr(module, attribute)

        if name == DOCSTRING_MODULE:
            for cls in DOCSTRING_CLASSES:
                setattr(module, cls, _NoDocstring)
        module.__dict__["__getattr__"] = run_body


class _DeferringFinder:
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in DEFERRED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return None
        spec.loader = cast("Loader", _DeferredLoader(spec.loader))
        return spec


def _is_submodule(folder: Path, attribute: str) -> bool:
    return (folder / f"{attribute}.py").is_file() or (folder / attribute / "__init__.py").is_file()


def begin() -> None:
    """Defer the two package bodies and pause collections, once."""
    if any(isinstance(f, _DeferringFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _DeferringFinder())
    _paused.append(gc.get_threshold())
    gc.set_threshold(START_THRESHOLD, *_paused[0][1:])


def started() -> None:
    """The start is over: freeze what exists, collect as usual. No-op elsewhere."""
    try:
        usual = _paused.pop()  # atomic: clients made in two threads at once resume once
    except IndexError:
        return
    gc.freeze()
    gc.set_threshold(*usual)
