"""A boto3 S3 client set up for uploads with the seed policy's narrow credentials."""

from __future__ import annotations

import functools
import gzip
import json
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import botocore.handlers
import botocore.session
from botocore.config import Config
from botocore.hooks import HierarchicalEmitter
from botocore.loaders import JSONFileLoader, Loader

from voicevault.uploader import quickstart, s3endpoints
from voicevault.uploader.bucketurl import BucketLocation

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@dataclass(frozen=True)
class AwsKeys:
    """An access key. `repr` never shows the secret parts."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return f"AwsKeys(access_key_id='…{self.access_key_id[-4:]}', secret_access_key=<hidden>)"

    __str__ = __repr__


@dataclass(frozen=True)
class ClientSettings:
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    # botocore's own quick retries for throttling, 5xx and dropped connections; longer
    # outages are the operator's business (retry window)
    max_attempts: int = 3
    max_pool_connections: int = 16


def make_client(
    location: BucketLocation, keys: AwsKeys, settings: ClientSettings | None = None
) -> S3Client:
    """An S3 client for `location` (AWS or the endpoint override)."""
    settings = settings or ClientSettings()
    s3_options: Any = {
        # S3-compatible endpoints are addressed path-style; AWS picks what fits the bucket
        "addressing_style": "path" if location.endpoint_url else "auto",
        # every request carries its own SHA-256 checksum header, so hashing the body a
        # second time for the signature would only cost CPU
        "payload_signing_enabled": False,
    }
    config = Config(
        region_name=location.region,
        signature_version="s3v4",
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        max_pool_connections=settings.max_pool_connections,
        s3=s3_options,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        tcp_keepalive=True,
    )
    with _SESSION_LOCK:  # a boto3 session is not thread-safe
        client = _shared_session().create_client(
            "s3",
            endpoint_url=location.endpoint_url,
            config=config,
            aws_access_key_id=keys.access_key_id,
            aws_secret_access_key=keys.secret_access_key,
            aws_session_token=keys.session_token,
        )
    quickstart.started()  # an uploader pod's process: its start is over
    return cast("S3Client", client)


class AnsweredRegion:
    """The region an S3 client signed its last successful request for.

    botocore's region redirector follows a wrong-region answer that names the bucket's
    region and signs the retry for it; this reads the region it settled on, so the
    operator can remember it for the setting instead of being redirected on every request.
    """

    def __init__(self, client: S3Client) -> None:
        self.region: str | None = None
        client.meta.events.register("after-call.s3", self._answered)

    def _answered(self, http_response: Any, context: dict[str, Any], **_: Any) -> None:
        if getattr(http_response, "status_code", 500) < 300:
            region = (context.get("signing") or {}).get("region")
            self.region = str(region) if region else self.region


_SESSION_LOCK = threading.Lock()


class _PlainJSONFileLoader(JSONFileLoader):
    """botocore's model file loader, building plain dicts instead of OrderedDicts.

    The `object_pairs_hook=OrderedDict` botocore passes makes `json` call back into
    Python for each of the S3 model's and endpoint data's objects: parsing them took
    about 45 ms of each uploader pod's start, a third of that without the hook. A dict
    keeps the same order, and nothing reads the model for OrderedDict's extras.
    `endpoints.json` comes from its S3 extract while the file is the one it was made of.
    """

    def _load_file(self, full_path: str, open_method: Any) -> Any:
        if not os.path.isfile(full_path):
            return None
        if open_method is gzip.open:  # in one piece: no chunks to join (S3's two models)
            with open(full_path, "rb") as fp:
                raw = gzip.decompress(fp.read())
        else:
            with open_method(full_path, "rb") as fp:
                raw = fp.read()
        if os.path.basename(full_path) == s3endpoints.FILE_NAME:
            extract = s3endpoints.extract_for(raw)
            if extract is not None:
                return extract
        return json.loads(raw.decode("utf-8"))


class _S3Loader(Loader):
    """botocore's data loader for a process whose clients are all S3 clients.

    To check a service name, botocore's loader lists every service it ships (about 900
    directories, each stat'ed, once per model type): some 40 ms of an uploader pod's
    start, twice. Only S3 is ever asked for here.
    """

    def list_available_services(self, type_name: str) -> list[str]:
        return ["s3"]


class _Emitter(HierarchicalEmitter):
    """botocore's event emitter, trusting botocore's own handlers to take **kwargs.

    Each registration checks that the handler accepts keyword arguments with
    `inspect.getfullargspec`: for the 130 handlers botocore registers itself, 15 ms of
    each uploader pod's start, checking botocore's code against botocore's rule. Every
    other handler (ours) is still checked.
    """

    def _verify_accept_kwargs(self, func: Any) -> None:
        if not getattr(func, "__module__", "").startswith("botocore."):
            super()._verify_accept_kwargs(func)  # type: ignore[misc]  # not in the stubs


def applies_to_s3(event_name: str) -> bool:
    """A handler for this event can run in an S3 client: no service named, or S3's.
    (`docs.*` events only run when botocore writes its documentation.)"""
    parts = event_name.split(".")
    return parts[0] != "docs" and (len(parts) == 1 or parts[1] == "s3")


class _S3Session(botocore.session.Session):
    """A botocore session that registers only the built-in handlers S3 clients can run.

    botocore registers about 130 handlers in each session, for every service, each
    through its event aliaser: about 10 ms of an uploader pod's start. Two thirds are
    for other services (EC2, RDS, Glacier...) or for writing documentation.
    """

    def _register_builtin_handlers(self, events: Any) -> None:
        for spec in botocore.handlers.BUILTIN_HANDLERS:
            event_name, handler = spec[0], spec[1]
            if not applies_to_s3(event_name):
                continue
            if len(spec) == 2:
                self.register(event_name, handler)
            elif spec[2] is botocore.handlers.REGISTER_FIRST:
                events.register_first(event_name, handler)
            elif spec[2] is botocore.handlers.REGISTER_LAST:
                events.register_last(event_name, handler)


@functools.cache
def _shared_session() -> botocore.session.Session:
    """One session for every client, holding no credentials (each client gets its own).

    A new session parses botocore's S3 model again: about 75 ms and 12 MiB of garbage a
    client. The operator makes a client at each setting validation, and those bursts
    raised its RSS high-water mark. A botocore session rather than boto3's: boto3 adds
    nothing used here, and `import boto3` would also import s3transfer's managed
    transfers (upload_file, download_file), which nothing here calls.
    """
    session = _S3Session(event_hooks=_Emitter())
    data_path = session.get_config_variable("data_path")
    paths = data_path.split(os.pathsep) if data_path else []
    loader = _S3Loader(extra_search_paths=paths, file_loader=_PlainJSONFileLoader())
    session.register_component("data_loader", loader)
    return session


def warm_up() -> None:
    """Parse the S3 model into the shared session now. A long-running process (the
    operator) then holds it from the start, instead of taking about 12 MiB at its first
    validation, and that first client costs milliseconds."""
    with _SESSION_LOCK:
        _shared_session().create_client(
            "s3",
            region_name="us-east-1",
            aws_access_key_id="warm-up",  # never used: the client sends no request
            aws_secret_access_key="warm-up",  # noqa: S106 - a placeholder, not a secret
        )
