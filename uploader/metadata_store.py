"""Writing the metadata document beside a stored media object, resumably.

The order is what makes it safe: the document is written only after the media object
is complete (never a document whose media is absent), and it is built once and saved
in the upload's resume state before its PutObject. A run that resumes after a crash
between the two writes therefore sends the same bytes, once, without sending the media
again; a document already recorded as stored is not sent again. Its PutObject uses the
seed policy's s3:PutObject alone and fails by the same transient/fatal rules as the media.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from voicevault import package_version
from voicevault.uploader.metadata import (
    CONTENT_TYPE,
    MetadataTarget,
    StoredMedia,
    build_document,
    encode_document,
)
from voicevault.uploader.state import MetadataState, StatePhase, StateStore
from voicevault.uploader.transfer import UploadRequest, UploadResult, put_small_object

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def stored_media(result: UploadResult) -> StoredMedia:
    """What the document says about the media object `result` describes."""
    if result.sha256 is None:
        raise ValueError("the upload was not asked for a digest (with_metadata)")
    return StoredMedia(
        key=result.key,
        url=result.media_url,
        size=result.size,
        content_type=result.content_type,
        sha256=result.sha256,
        encryption=result.encryption,
    )


def store_metadata(
    client: S3Client,
    request: UploadRequest,
    result: UploadResult,
    target: MetadataTarget,
    store: StateStore,
    attempts: int = 3,
) -> str:
    """PUT the metadata document of the stored `result`; returns the document's URL.

    Raises a classified UploadError when the PutObject fails; the resume state (with the
    document) is kept, so the next run sends the same document.
    """
    name = request.upload_name
    state = store.load(name)
    if state is not None and state.phase is not StatePhase.COMPLETED:
        state = None  # not this object's completed state: keep the document in memory only
    pending = state.metadata if state is not None else None
    if pending is None or pending.key != target.key:
        document = encode_document(
            build_document(target.recording, stored_media(result), package_version())
        )
        pending = MetadataState(key=target.key, document=document.decode())
        if state is not None:
            state.metadata = pending
            store.save(name, state)
    if not pending.stored:
        put_small_object(
            client,
            request.location.bucket,
            target.key,
            pending.document.encode(),
            CONTENT_TYPE,
            attempts,
        )
        pending.stored = True
        if state is not None:
            store.save(name, state)
    result.metadata_url = target.url
    return target.url
