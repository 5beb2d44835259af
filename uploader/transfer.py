"""Upload one media file into the bucket: single PUT or resumable multipart.

Only the four permissions of the seed policy are used: PutObject (also covers the
multipart calls CreateMultipartUpload, UploadPart and CompleteMultipartUpload),
AbortMultipartUpload, ListMultipartUploadParts and ListBucketMultipartUploads. A resumed
upload finds its place with ListMultipartUploads (asked with the object's exact key, the
one form every S3 server answers) and ListParts, re-creates the object's bytes, skips
the parts the bucket holds with a matching checksum and sends the rest.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from botocore.exceptions import ClientError

from voicevault.contract import ErrorCode
from voicevault.uploader import envelope
from voicevault.uploader.bucketurl import BucketLocation
from voicevault.uploader.errors import (
    CHECKSUM_MISMATCH_CODES,
    UploadError,
    classify,
    fatal,
    s3_error_code,
    transient,
)
from voicevault.uploader.parts import (
    BUFFER_SLACK,
    MIB,
    ObjectReader,
    SourceChangedError,
    choose_part_size,
    object_size,
    part_count,
    part_length,
)
from voicevault.uploader.progress import NoProgress, Progress
from voicevault.uploader.s3calls import abort_upload, open_upload_ids
from voicevault.uploader.state import (
    EncryptionState,
    SourceFingerprint,
    StatePhase,
    StateStore,
    UploadState,
    b64,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("voicevault.uploader")


@dataclass(frozen=True)
class TransferConfig:
    multipart_threshold: int = 16 * MIB
    part_size: int = 8 * MIB
    # parts in flight; with the part being prepared that is 4 buffers of 8 MiB, which keeps
    # the command under 100 MiB RSS and still saturates S3 (BENCHMARKS.md)
    concurrency: int = 3
    # memory for part buffers; larger parts (objects over ~78 GiB) mean fewer in flight
    buffer_budget: int = 32 * MIB
    # a part the server rejected as corrupted (checksum mismatch) is re-sent this often
    part_attempts: int = 3


@dataclass(frozen=True)
class EncryptionKey:
    """The customer's public key and its SID."""

    public_key: RSAPublicKey
    sid: str


@dataclass(frozen=True)
class UploadRequest:
    source: Path
    location: BucketLocation
    key: str
    content_type: str
    encryption: EncryptionKey | None = None
    # name of the resume state file (the recording SID in cluster mode)
    state_name: str = ""
    # how messages name the media: its path relative to the account's folder
    media_name: str = ""
    # a metadata document follows the media: compute the object's SHA-256 while sending,
    # and leave a completed resume state (single PUTs too) for that second step
    with_metadata: bool = False

    @property
    def upload_name(self) -> str:
        """Name of the resume state file."""
        if self.state_name:
            return self.state_name
        return hashlib.sha256(f"{self.location.bucket}/{self.key}".encode()).hexdigest()[:32]


@dataclass
class UploadResult:
    media_url: str
    key: str
    size: int  # bytes stored (ciphertext + tag when encrypted)
    source_size: int
    encryption: envelope.EncryptionDetails | None
    parts_sent: int = 0
    parts_skipped: int = 0
    parts_resent: int = 0
    resumed: bool = False
    sha256: str | None = None  # hex, of the stored bytes (with_metadata only)
    content_type: str = ""
    metadata_url: str | None = None  # set once the metadata document is stored too

    def to_json(self) -> dict[str, Any]:
        out = {
            "mediaUrl": self.media_url,
            "bytes": self.size,
            "encryptionDetails": self.encryption.to_status() if self.encryption else None,
        }
        if self.metadata_url:
            out |= {"metadataUrl": self.metadata_url, "sha256": self.sha256}
        return out


@dataclass
class _Counters:
    sent: int = 0
    skipped: int = 0
    resent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def upload(
    client: S3Client,
    request: UploadRequest,
    store: StateStore,
    config: TransferConfig | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> UploadResult:
    """Upload `request.source`; raises a classified UploadError on failure.

    On a transient failure the resume state is kept; on a fatal one any open multipart
    upload is aborted and the state wiped, since it will never be resumed.
    """
    config = config or TransferConfig()
    progress = progress or NoProgress()
    cancel = cancel or threading.Event()
    try:
        fingerprint = SourceFingerprint.of(request.source)
    except FileNotFoundError:
        raise _missing(request) from None
    except OSError as exc:
        raise classify(exc, "reading media") from None
    if request.with_metadata:
        saved = store.load(request.upload_name)
        if (
            saved is not None
            and saved.phase is StatePhase.COMPLETED
            and _resumable(saved, request, fingerprint)
        ):
            # stored before a crash; only the metadata document may be missing
            _keep_digest(request, saved, store)
            return _result_from_state(saved, request, _Counters(), resumed=True)
    size = object_size(fingerprint.size, request.encryption is not None)
    if size <= config.multipart_threshold:
        return _single_put(client, request, store, fingerprint, progress, config.part_attempts)
    return _Multipart(client, request, store, config, progress, cancel, fingerprint).run()


def _open_media(request: UploadRequest) -> BinaryIO:
    try:
        return request.source.open("rb", buffering=0)
    except FileNotFoundError:
        raise _missing(request) from None
    except OSError as exc:
        raise classify(exc, "reading media") from None


def _missing(request: UploadRequest) -> UploadError:
    name = request.media_name or request.source.name
    return fatal(ErrorCode.UPLOAD_FAILED, f"media file {name!r} not found in the account's folder")


def _seal(encryption: EncryptionKey) -> tuple[envelope.ContentKey, envelope.EncryptionDetails]:
    try:
        content_key = envelope.new_content_key()
        details = envelope.seal_content_key(encryption.public_key, content_key)
        return content_key, dataclasses.replace(details, public_key_sid=encryption.sid)
    except Exception:
        raise fatal(ErrorCode.ENCRYPTION_FAILED, "could not wrap the content key") from None


def _sha256_b64(data: memoryview | bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def _resumable(saved: UploadState, request: UploadRequest, fingerprint: SourceFingerprint) -> bool:
    """Whether a saved state belongs to this request: same object, media and key SID."""
    wanted = request.encryption
    return (
        saved.matches(request.location.bucket, request.key, fingerprint)
        and (saved.encryption is not None) == (wanted is not None)
        and (
            saved.encryption is None
            or wanted is None
            or saved.encryption.public_key_sid == wanted.sid
        )
    )


def _result_from_state(
    state: UploadState, request: UploadRequest, counters: _Counters, *, resumed: bool
) -> UploadResult:
    enc = state.encryption
    details = (
        envelope.EncryptionDetails(
            public_key_sid=enc.public_key_sid, encrypted_cek=enc.encrypted_cek, iv=enc.iv
        )
        if enc
        else None
    )
    return UploadResult(
        media_url=state.media_url or request.location.object_url(request.key),
        key=request.key,
        size=state.object_size,
        source_size=state.source.size,
        encryption=details,
        parts_sent=counters.sent,
        parts_skipped=counters.skipped,
        parts_resent=counters.resent,
        resumed=resumed,
        sha256=state.sha256,
        content_type=request.content_type,
    )


def put_small_object(
    client: S3Client, bucket: str, key: str, body: bytes, content_type: str, attempts: int
) -> int:
    """One PutObject of an in-memory body with its SHA-256; returns how often it was re-sent."""
    view = memoryview(body)
    _, resent = _send(
        "PutObject",
        lambda: client.put_object(
            Bucket=bucket,
            Key=key,
            Body=_Body(view),  # type: ignore[arg-type]
            ContentType=content_type,
            ChecksumSHA256=_sha256_b64(view),
        ),
        attempts,
        key,
        1,
    )
    return resent


def _send(
    operation: str, call: Callable[[], Any], attempts: int, key: str, part: int
) -> tuple[Any, int]:
    """Make one S3 request, re-sending it when the server says the body arrived corrupted.

    Returns the response and how many times it was re-sent. Any other error is classified.
    """
    resent = 0
    while True:
        try:
            return call(), resent
        except ClientError as exc:
            if s3_error_code(exc) in CHECKSUM_MISMATCH_CODES and resent + 1 < attempts:
                resent += 1
                log.warning(
                    "%s of part %d was rejected as corrupted in transit; sending it again",
                    operation,
                    part,
                    extra={"key": key, "part": part, "event": "part_resent"},
                )
                continue
            raise classify(exc, operation) from None
        except Exception as exc:
            raise classify(exc, operation) from None


def _single_put(
    client: S3Client,
    request: UploadRequest,
    store: StateStore,
    fingerprint: SourceFingerprint,
    progress: Progress,
    attempts: int,
) -> UploadResult:
    content_key, details = _seal(request.encryption) if request.encryption else (None, None)
    size = object_size(fingerprint.size, content_key is not None)
    progress.start(size)
    buffer = bytearray(size + BUFFER_SLACK)
    with _open_media(request) as media:
        try:
            body = ObjectReader(media, fingerprint.size, content_key).read_into(buffer, size)
        except SourceChangedError:
            raise transient("media file changed while reading") from None
        except OSError as exc:
            raise classify(exc, "reading media") from None
    digest = hashlib.sha256(body).digest()
    checksum = base64.b64encode(digest).decode("ascii")
    _, resent = _send(
        "PutObject",
        lambda: client.put_object(
            Bucket=request.location.bucket,
            Key=request.key,
            Body=_Body(body),  # type: ignore[arg-type]
            ContentType=request.content_type,
            ChecksumSHA256=checksum,
        ),
        attempts,
        request.key,
        1,
    )
    progress.advance(size)
    result = UploadResult(
        media_url=request.location.object_url(request.key),
        key=request.key,
        size=size,
        source_size=fingerprint.size,
        encryption=details,
        parts_sent=1,
        parts_resent=resent,
        sha256=digest.hex() if request.with_metadata else None,
        content_type=request.content_type,
    )
    if request.with_metadata:
        # the metadata step resumes from this without sending the media again
        store.save(request.upload_name, _completed_single_put(request, fingerprint, result))
    return result


def _completed_single_put(
    request: UploadRequest, fingerprint: SourceFingerprint, result: UploadResult
) -> UploadState:
    """The state of a stored single-PUT object; the content key is not kept (no resume
    of the media needs it any more)."""
    details = result.encryption
    return UploadState(
        bucket=request.location.bucket,
        key=request.key,
        source=fingerprint,
        part_size=result.size,
        object_size=result.size,
        phase=StatePhase.COMPLETED,
        encryption=EncryptionState(
            content_key="",
            iv=details.iv,
            public_key_sid=details.public_key_sid,
            encrypted_cek=details.encrypted_cek,
        )
        if details
        else None,
        media_url=result.media_url,
        sha256=result.sha256,
    )


@dataclass(frozen=True)
class _StoredPart:
    etag: str
    size: int
    checksum_sha256: str | None


class _Multipart:
    """One multipart upload, new or resumed."""

    def __init__(
        self,
        client: S3Client,
        request: UploadRequest,
        store: StateStore,
        config: TransferConfig,
        progress: Progress,
        cancel: threading.Event,
        fingerprint: SourceFingerprint,
    ) -> None:
        self.client = client
        self.request = request
        self.bucket = request.location.bucket
        self.key = request.key
        self.store = store
        self.config = config
        self.progress = progress
        self.cancel = cancel
        self.fingerprint = fingerprint
        self.state_name = request.upload_name
        self.counters = _Counters()
        self.digest = hashlib.sha256() if request.with_metadata else None

    # -- orchestration -------------------------------------------------------------------

    def run(self) -> UploadResult:
        state, resumed = self._load_or_create_state()
        try:
            result = self._run(state, resumed)
        except UploadError as exc:
            if exc.fatal:
                self._abandon(state)
            raise
        return result

    def _run(self, state: UploadState, resumed: bool) -> UploadResult:
        open_uploads = self._open_upload_ids()
        if state.phase is not StatePhase.UPLOADING and state.upload_id not in open_uploads:
            # CompleteMultipartUpload was sent before a crash and the upload is gone
            return self._finished(state, resumed=True)
        for stray in open_uploads - {state.upload_id}:
            # left by a run that died before it could record its upload id
            self._abort(stray)
        if state.upload_id not in open_uploads:
            if state.upload_id is not None:
                log.warning("multipart upload vanished; starting it again", extra=self._ctx())
            state.upload_id = self._create()
            state.phase = StatePhase.UPLOADING
            self.store.save(self.state_name, state)
            stored: dict[int, _StoredPart] = {}
        else:
            stored = self._list_parts(state.upload_id)
        parts = self._send_parts(state, stored)
        state.phase = StatePhase.COMPLETING
        if self.digest is not None:
            state.sha256 = self.digest.hexdigest()
        self.store.save(self.state_name, state)
        self._complete(state.upload_id, parts)
        return self._finished(state, resumed=resumed or bool(stored))

    def _finished(self, state: UploadState, *, resumed: bool) -> UploadResult:
        _keep_digest(self.request, state, None)
        state.phase = StatePhase.COMPLETED
        state.media_url = self.request.location.object_url(self.key)
        self.store.save(self.state_name, state)
        return _result_from_state(state, self.request, self.counters, resumed=resumed)

    def _load_or_create_state(self) -> tuple[UploadState, bool]:
        saved = self.store.load(self.state_name)
        wants_encryption = self.request.encryption is not None
        if saved is not None and _resumable(saved, self.request, self.fingerprint):
            return saved, True
        if saved is not None and saved.upload_id:
            # the media or the settings changed: the old parts are of no use
            self._abort(saved.upload_id)
        size = object_size(self.fingerprint.size, wants_encryption)
        state = UploadState(
            bucket=self.bucket,
            key=self.key,
            source=self.fingerprint,
            part_size=choose_part_size(size, self.config.part_size),
            object_size=size,
        )
        if self.request.encryption is not None:
            content_key, details = _seal(self.request.encryption)
            state.encryption = EncryptionState(
                content_key=b64(content_key.key),
                iv=b64(content_key.iv),
                public_key_sid=details.public_key_sid,
                encrypted_cek=details.encrypted_cek,
            )
        self.store.save(self.state_name, state)
        return state, False

    def _abandon(self, state: UploadState) -> None:
        if state.upload_id:
            with contextlib.suppress(UploadError):
                self._abort(state.upload_id)
        self.store.wipe(self.state_name)

    def _ctx(self) -> dict[str, Any]:
        return {"key": self.key}

    # -- S3 calls --------------------------------------------------------------------------

    def _call(self, operation: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return fn(Bucket=self.bucket, Key=self.key, **kwargs)
        except Exception as exc:
            raise classify(exc, operation) from None

    def _open_upload_ids(self) -> set[str]:
        return open_upload_ids(self.client, self.bucket, self.key)

    def _create(self) -> str:
        response = self._call(
            "CreateMultipartUpload",
            self.client.create_multipart_upload,
            ContentType=self.request.content_type,
            ChecksumAlgorithm="SHA256",
        )
        return str(response["UploadId"])

    def _abort(self, upload_id: str) -> None:
        abort_upload(self.client, self.bucket, self.key, upload_id)

    def _list_parts(self, upload_id: str) -> dict[int, _StoredPart]:
        parts: dict[int, _StoredPart] = {}
        marker = 0
        while True:
            page = self._call(
                "ListParts",
                self.client.list_parts,
                UploadId=upload_id,
                PartNumberMarker=marker,
            )
            for p in page.get("Parts", []):
                parts[int(p["PartNumber"])] = _StoredPart(
                    etag=str(p["ETag"]),
                    size=int(p["Size"]),
                    checksum_sha256=p.get("ChecksumSHA256"),
                )
            if not page.get("IsTruncated"):
                return parts
            marker = int(page["NextPartNumberMarker"])

    def _complete(self, upload_id: str, parts: list[dict[str, Any]]) -> None:
        try:
            self._call(
                "CompleteMultipartUpload",
                self.client.complete_multipart_upload,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except UploadError as exc:
            if exc.s3_code == "NoSuchUpload":
                # botocore re-sent a CompleteMultipartUpload whose first answer was lost:
                # the upload was open a moment ago and only this uploader touches it
                # (the operator aborts uploads only after their pod has ended)
                return
            raise

    # -- parts -------------------------------------------------------------------------------

    def _send_parts(
        self, state: UploadState, stored: dict[int, _StoredPart]
    ) -> list[dict[str, Any]]:
        assert state.upload_id is not None
        size, part_size = state.object_size, state.part_size
        count = part_count(size, part_size)
        content_key = _content_key(state.encryption)
        workers = max(1, min(self.config.concurrency, self.config.buffer_budget // part_size - 1))
        pool: queue.Queue[bytearray] = queue.Queue()
        for _ in range(workers + 1):
            pool.put(bytearray(part_size + BUFFER_SLACK))
        completed: dict[int, dict[str, Any]] = {}
        self.progress.start(size)
        with (
            _open_media(self.request) as media,
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="part") as executor,
        ):
            reader = ObjectReader(media, state.source.size, content_key)
            pending: set[Future[None]] = set()
            try:
                for number in range(1, count + 1):
                    if self.cancel.is_set():
                        raise transient("upload interrupted; it resumes on the next run")
                    _reap(pending)
                    length = part_length(size, part_size, number)
                    buffer = pool.get()
                    try:
                        body = reader.read_into(buffer, length)
                    except SourceChangedError:
                        pool.put(buffer)
                        raise transient("media file changed while uploading") from None
                    except OSError as exc:
                        pool.put(buffer)
                        raise classify(exc, "reading media") from None
                    checksum = _sha256_b64(body)
                    if self.digest is not None:
                        self.digest.update(body)  # parts are read in order, resumed or not
                    previous = stored.get(number)
                    if previous is not None and _same_part(previous, body, checksum):
                        completed[number] = _part_entry(number, previous.etag, checksum)
                        with self.counters.lock:
                            self.counters.skipped += 1
                        pool.put(buffer)
                        self.progress.advance(length)
                        continue
                    pending.add(
                        executor.submit(
                            self._send_part,
                            state.upload_id,
                            number,
                            body,
                            checksum,
                            completed,
                            lambda b=buffer: pool.put(b),  # type: ignore[misc]
                        )
                    )
                wait(pending, return_when=FIRST_EXCEPTION)
                _reap(pending)
                if pending:  # an exception ended the wait early but _reap saw none
                    wait(pending)
                    _reap(pending)
            except BaseException:
                self.cancel.set()
                for f in pending:
                    f.cancel()
                raise
        return [completed[n] for n in sorted(completed)]

    def _send_part(
        self,
        upload_id: str,
        number: int,
        body: memoryview,
        checksum: str,
        completed: dict[int, dict[str, Any]],
        release: Callable[[], None],
    ) -> None:
        try:
            if self.cancel.is_set():
                raise transient("upload interrupted; it resumes on the next run")
            response, resent = _send(
                "UploadPart",
                lambda: self.client.upload_part(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=_Body(body),  # type: ignore[arg-type]
                    ChecksumSHA256=checksum,
                ),
                self.config.part_attempts,
                self.key,
                number,
            )
            completed[number] = _part_entry(number, str(response["ETag"]), checksum)
            with self.counters.lock:
                self.counters.sent += 1
                self.counters.resent += resent
            self.progress.advance(len(body))
        finally:
            release()


class _Body:
    """A read-only, seekable file over a part buffer, so botocore sends it without a copy."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        end = (
            len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        )
        chunk = bytes(self._view[self._pos : end])
        self._pos = end
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._view)}[whence]
        self._pos = max(0, min(len(self._view), base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return len(self._view)


def _part_entry(number: int, etag: str, checksum: str) -> dict[str, Any]:
    return {"PartNumber": number, "ETag": etag, "ChecksumSHA256": checksum}


def _same_part(stored: _StoredPart, body: memoryview, checksum: str) -> bool:
    """Whether the bucket's part equals ours: by SHA-256 where listed, else by the MD5 ETag."""
    if stored.size != len(body):
        return False
    if stored.checksum_sha256:
        return stored.checksum_sha256 == checksum
    etag = stored.etag.strip('"')
    return "-" not in etag and etag == hashlib.md5(body, usedforsecurity=False).hexdigest()


def _content_key(state: EncryptionState | None) -> envelope.ContentKey | None:
    if state is None:
        return None
    return envelope.ContentKey(
        key=base64.b64decode(state.content_key), iv=base64.b64decode(state.iv)
    )


def _keep_digest(request: UploadRequest, state: UploadState, store: StateStore | None) -> None:
    """A state completed by a run that kept no digest (metadata was not asked for then):
    hash the same object bytes again from the media and the saved content key."""
    if not request.with_metadata or state.sha256 is not None:
        return
    state.sha256 = _rehash(request, state)
    if store is not None:
        store.save(request.upload_name, state)


def _rehash(request: UploadRequest, state: UploadState) -> str:
    """The object's SHA-256, re-created from the media with one bounded buffer."""
    buffer = bytearray(MIB + BUFFER_SLACK)
    digest = hashlib.sha256()
    with _open_media(request) as media:
        reader = ObjectReader(media, state.source.size, _content_key(state.encryption))
        left = state.object_size
        try:
            while left:
                chunk = reader.read_into(buffer, min(MIB, left))
                digest.update(chunk)
                left -= len(chunk)
        except SourceChangedError:
            raise transient("media file changed while hashing it") from None
        except OSError as exc:
            raise classify(exc, "reading media") from None
    return digest.hexdigest()


def _reap(pending: set[Future[None]]) -> None:
    """Drop finished part uploads from `pending`; re-raise the first failure."""
    for f in [f for f in pending if f.done()]:
        pending.discard(f)
        if not f.cancelled() and (exc := f.exception()) is not None:
            raise exc
