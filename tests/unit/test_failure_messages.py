"""What a person reads about a failure is true: what happened to the media, which file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from voicevault.contract import ErrorCode
from voicevault.phases import fatal_failure
from voicevault.uploader.bucketurl import parse_bucket_url
from voicevault.uploader.errors import UploadError, fatal
from voicevault.uploader.recordingstatus import failed_patch
from voicevault.uploader.transfer import UploadRequest, upload

AT = "2026-11-02T10:00:00Z"


def test_failed_says_local_media_deleted_only_when_it_was() -> None:
    error = fatal(ErrorCode.ACCESS_DENIED, "access denied")
    deleted_patch = failed_patch(error, {}, AT, media_deleted=True)
    absent_patch = failed_patch(error, {}, AT, media_deleted=False)
    assert deleted_patch is not None and absent_patch is not None
    deleted, absent = deleted_patch["message"], absent_patch["message"]
    assert "local media deleted" in deleted and "16112" in deleted
    assert "deleted" not in absent.replace("nothing was deleted", "")
    assert "nothing was deleted" in absent


def test_operator_recording_a_fatal_result_claims_nothing_about_the_media() -> None:
    patch, _ = fatal_failure({}, code=16111, message="x", now=datetime(2026, 11, 2, tzinfo=UTC))
    assert patch["message"] == "Fatal error 16111; no retries"


def test_missing_media_names_its_path_relative_to_the_account_folder(tmp_path: Path) -> None:
    account_folder = tmp_path / "recordings" / "acme"
    request = UploadRequest(
        source=account_folder / "2026" / "11" / "call-0001.wav",
        location=parse_bucket_url("https://bucket-name.s3.amazonaws.com/"),
        key="k",
        content_type="audio/x-wav",
        media_name="2026/11/call-0001.wav",
    )
    with pytest.raises(UploadError) as info:
        upload(None, request, None)  # type: ignore[arg-type]
    assert info.value.fatal and info.value.code == ErrorCode.UPLOAD_FAILED
    assert "'2026/11/call-0001.wav' not found" in info.value.message
    assert str(tmp_path) not in info.value.message
