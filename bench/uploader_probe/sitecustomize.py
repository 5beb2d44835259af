"""Start-cost probe for uploader processes of the stand-in kubelet (bench/recordings.py).

The benchmark puts this folder on the stand-in kubelet's PYTHONPATH, which it passes on
to the pods' processes. In a pod's process (its working directory is the pod's folder
under ``pods/``) it records, for the first few outgoing connections, the address, the
process's CPU seconds so far and the modules loaded, and at exit the CPU seconds in all;
it writes them to ``start-probe.json`` in that folder. Elsewhere it does nothing.
Cost: one audit hook that returns at once for other events.
"""

from __future__ import annotations

import atexit
import json
import sys
import time
from pathlib import Path
from typing import Any

_MAX_CONNECTS = 4


def _cpu() -> float:
    return time.process_time()  # user + system of this process, in nanosecond steps


def _install(folder: Path) -> None:
    connects: list[dict[str, Any]] = []

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event != "socket.connect" or len(connects) >= _MAX_CONNECTS:
            return
        address = args[1]
        if isinstance(address, tuple) and len(address) >= 2:
            connects.append(
                {
                    "host": str(address[0]),
                    "port": int(address[1]),
                    "cpu_s": _cpu(),
                    "at": time.time(),
                    "modules": list(sys.modules),
                }
            )

    def write() -> None:
        record = {"exit_cpu_s": _cpu(), "exit_at": time.time(), "connects": connects}
        (folder / "start-probe.json").write_text(json.dumps(record))

    sys.addaudithook(hook)
    atexit.register(write)


_here = Path.cwd()
if _here.parent.name == "pods":
    _install(_here)
