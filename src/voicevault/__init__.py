"""voicevault: store call recordings, encrypted, in the customer's own S3 bucket."""

from __future__ import annotations

from functools import cache

API_GROUP = "voicevault.io"
API_VERSION = "v1alpha1"


@cache
def package_version() -> str:
    """The installed version. Looked up on first use: `importlib.metadata` and its scan of
    the installed distributions cost each uploader pod's start about 50 ms (#19)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("voicevault")
    except PackageNotFoundError:  # running from a source tree without install
        return "0.0.0+source"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return package_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
