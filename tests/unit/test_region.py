"""The pure parts of region discovery: reading a wrong-region answer, classifying it
(never fatal), remembering the found region for the setting, refusing a contradicted one,
the fault proxy's imitation of S3, and the README's failure tables against the code."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.bed.faultproxy import AwsRegions, aws_target, wrong_region_answer
from tests.support import samples
from tests.unit.test_admission import request, setting
from voicevault.contract import ErrorClass, ErrorCode
from voicevault.crds.recording import RecordingSpec
from voicevault.operator import settings
from voicevault.operator.admission import decide
from voicevault.operator.settings import CredentialView, SettingView
from voicevault.operator.snapshot import take_snapshot
from voicevault.uploader.bucketurl import parse_bucket_url, region_mismatch
from voicevault.uploader.errors import REGION_HINT_CODES, classify, region_hint

README = Path(__file__).resolve().parents[2] / "README.md"
NOW = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
AUTH_US_EAST_1 = (
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261102/us-east-1/s3/aws4_request, "
    "SignedHeaders=host, Signature=00"
)


def _response(
    code: str, status: int, *, header: str | None = None, region: str | None = None
) -> dict[str, Any]:
    error: dict[str, str] = {"Code": code, "Message": "m"}
    if region is not None:
        error["Region"] = region
    headers = {"x-amz-bucket-region": header} if header is not None else {}
    return {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers}}


# --- the hint -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "found"),
    [
        (_response("PermanentRedirect", 301, header="eu-west-1"), "eu-west-1"),
        (_response("AuthorizationHeaderMalformed", 400, region="ap-south-2"), "ap-south-2"),
        (_response("PermanentRedirect", 301, header="eu-west-1", region="us-west-2"), "eu-west-1"),
        (_response("PermanentRedirect", 301), None),
        (_response("AuthorizationHeaderMalformed", 400, region="<script>"), None),
        (_response("PermanentRedirect", 301, header=""), None),
        ({}, None),
    ],
    ids=["header", "xml", "header-first", "none", "not-a-region", "empty", "no-metadata"],
)
def test_region_hint_reads_the_header_then_the_error_xml(
    response: dict[str, Any], found: str | None
) -> None:
    assert region_hint(response) == found


@pytest.mark.parametrize("code", sorted(REGION_HINT_CODES))
@pytest.mark.parametrize("region", ["eu-west-1", None])
def test_a_region_hint_is_never_fatal(code: str, region: str | None) -> None:
    status = 301 if code == "PermanentRedirect" else 400
    exc = ClientError(_response(code, status, header=region), "PutObject")  # type: ignore[arg-type]

    error = classify(exc, "PutObject")

    assert error.error_class is ErrorClass.TRANSIENT and not error.fatal
    assert error.code is ErrorCode.UPLOAD_FAILED
    assert error.s3_code == code
    assert ("'eu-west-1'" in error.message) == (region is not None)
    assert "another region" in error.message or "region 'eu-west-1'" in error.message


# --- what the setting remembers ---------------------------------------------------------


def _evaluation(url: str, region: str | None = None) -> settings.SettingEvaluation:
    location = parse_bucket_url(url, region=region)
    return settings.SettingEvaluation(True, "Configured", "ok", location=location)


def test_a_found_region_is_signed_for_and_media_urls_keep_the_written_form() -> None:
    evaluation = _evaluation("https://calls.s3.amazonaws.com/voice")
    found = settings.Validation(True, "BucketAcceptsUploads", "ok", "eu-west-1")

    located = settings.located(evaluation, found, {}, 3)

    assert located.location is not None and evaluation.location is not None
    assert located.location.region == "eu-west-1"
    key = "voice/AC1/RE1.wav"
    assert located.location.object_url(key) == evaluation.location.object_url(key)
    assert located.location.object_url(key) == "https://calls.s3.amazonaws.com/voice/AC1/RE1.wav"


def test_the_region_is_remembered_for_the_generation_that_found_it() -> None:
    evaluation = _evaluation("https://calls.s3.amazonaws.com/voice")
    current = {"bucketRegion": "eu-west-1", "validatedGeneration": 3}

    same = settings.located(evaluation, None, current, 3)
    newer = settings.located(evaluation, None, current, 4)
    outage = settings.located(evaluation, settings.Validation(False, "X", "503"), current, 3)

    assert same.location is not None and same.location.region == "eu-west-1"
    assert newer.location is not None and newer.location.region == "us-east-1", (
        "a new generation may name another bucket: validated before it is trusted"
    )
    assert outage.location is not None and outage.location.region == "eu-west-1"


def test_the_snapshot_signs_for_the_found_region_and_keeps_the_written_url() -> None:
    credential = CredentialView(
        "acct", "s3-writer", "CR" + "1" * 32, True, "ok", "k", "A", "B", None
    )
    url = "https://calls.s3.amazonaws.com/voice/"
    evaluation = settings.evaluate("acct", samples.setting(url)["spec"], credential)
    found = settings.Validation(True, "BucketAcceptsUploads", "ok", "eu-west-1")
    located = settings.located(evaluation, found, {}, 1)
    view = SettingView("acct", 1, located.spec, located.location, None, True, "Configured", "ok")
    spec = RecordingSpec.model_validate(samples.recording()["spec"])

    snapshot = take_snapshot(view, spec, "RE" + "e" * 32, None)

    assert snapshot.region == "eu-west-1"
    assert snapshot.bucket_url == url
    assert snapshot.media_url.startswith(url), snapshot.media_url
    # what the uploader makes of it: signed for the found region from the first request
    uploader = parse_bucket_url(snapshot.bucket_url, region=snapshot.region)
    assert uploader.region == "eu-west-1"
    assert uploader.object_url(snapshot.object_key) == snapshot.media_url


def test_a_named_region_is_never_replaced() -> None:
    evaluation = _evaluation("https://calls.s3.us-west-2.amazonaws.com/voice")
    found = settings.Validation(False, "RegionMismatch", "m", "eu-west-1")
    located = settings.located(evaluation, found, {}, 1)
    assert located.location is not None and located.location.region == "us-west-2"


def test_status_shows_the_found_region_next_to_the_parsed_one() -> None:
    evaluation = _evaluation("https://calls.s3.amazonaws.com/voice")
    found = settings.Validation(True, "BucketAcceptsUploads", "ok", "eu-west-1")

    status = settings.status_for(
        settings.located(evaluation, found, {}, 2),
        generation=2,
        credential=None,
        current={},
        validated=found,
        validation_time=NOW,
        now=NOW,
    )

    assert status["bucketRegion"] == "eu-west-1"
    assert status["parsed"]["region"] == "us-east-1", "what the URL says (nothing: the default)"


@pytest.mark.parametrize("reason", ["RegionUnknown", "RegionMismatch"])
def test_a_region_problem_makes_the_setting_not_ready(reason: str) -> None:
    verdict = settings.Validation(False, reason, "why")
    assert settings.refusal(verdict, {}, 1) == (reason, "why")
    recorded = {
        "validatedGeneration": 1,
        "conditions": [{"type": "Validated", "status": "False", "reason": reason, "message": "m"}],
    }
    assert settings.refusal(None, recorded, 1) == (reason, "m")


def test_region_mismatch_names_both_regions_and_the_fix() -> None:
    named = parse_bucket_url("https://calls.s3.us-west-2.amazonaws.com/")
    unnamed = parse_bucket_url("https://calls.s3.amazonaws.com/")
    override = parse_bucket_url("https://calls.s3.amazonaws.com/", region="us-west-2")

    message = region_mismatch(named, "eu-west-1")

    assert message is not None
    assert "'eu-west-1'" in message and "'us-west-2'" in message and "calls" in message
    assert region_mismatch(named, "us-west-2") is None
    assert region_mismatch(unnamed, "eu-west-1") is None, "nothing named, nothing contradicted"
    assert region_mismatch(override, "eu-west-1") is not None


# --- the admission webhook ----------------------------------------------------------------


def _validated(bucket: str, region: str) -> dict[str, Any]:
    old = setting(bucketUrl=f"https://{bucket}.s3.amazonaws.com/recordings")
    old["status"] = {
        "parsed": {"bucket": bucket, "region": "us-east-1", "prefix": "recordings/"},
        "bucketRegion": region,
    }
    return old


def test_a_change_naming_a_region_the_bucket_contradicts_is_refused() -> None:
    old = _validated("calls-acme", "eu-west-1")
    new = setting(bucketUrl="https://calls-acme.s3.us-west-2.amazonaws.com/recordings")

    decision = decide(request(new, "UPDATE", old))

    assert not decision.allowed
    assert "is in region 'eu-west-1'" in decision.message
    assert "'us-west-2'" in decision.message and "last validation" in decision.message


@pytest.mark.parametrize(
    "url",
    [
        "https://calls-acme.s3.eu-west-1.amazonaws.com/recordings",  # the found region
        "https://calls-acme.s3.amazonaws.com/other",  # no region named
        "https://other-bucket.s3.us-west-2.amazonaws.com/recordings",  # another bucket
    ],
)
def test_changes_the_found_region_does_not_contradict_are_allowed(url: str) -> None:
    old = _validated("calls-acme", "eu-west-1")
    assert decide(request(setting(bucketUrl=url), "UPDATE", old)).allowed


def test_a_new_setting_has_no_found_region_to_contradict() -> None:
    new = setting(bucketUrl="https://calls-acme.s3.us-west-2.amazonaws.com/recordings")
    assert decide(request(new)).allowed


# --- the fault proxy imitates S3 ------------------------------------------------------------

REGIONS = AwsRegions({"calls": "eu-west-1"})


def test_a_request_signed_for_the_wrong_region_gets_authorization_header_malformed() -> None:
    target = aws_target("calls.s3.amazonaws.com", "/voice/x.wav", AUTH_US_EAST_1)
    assert target is not None and target.bucket == "calls" and target.endpoint_region is None

    answer = wrong_region_answer(REGIONS, target, "PUT")

    assert answer is not None
    assert (answer.status, answer.code) == (400, "AuthorizationHeaderMalformed")
    assert ("Region", "eu-west-1") in answer.elements
    assert "the region 'us-east-1' is wrong; expecting 'eu-west-1'" in answer.message


def test_a_request_to_another_regions_endpoint_gets_a_permanent_redirect() -> None:
    target = aws_target("calls.s3.us-west-2.amazonaws.com", "/k", AUTH_US_EAST_1)
    assert target is not None

    answer = wrong_region_answer(REGIONS, target, "PUT")

    assert answer is not None
    assert (answer.status, answer.code) == (301, "PermanentRedirect")
    assert ("x-amz-bucket-region", "eu-west-1") in answer.headers
    assert ("Endpoint", "calls.s3.eu-west-1.amazonaws.com") in answer.elements


def test_path_style_and_the_right_region_are_understood() -> None:
    signed_home = AUTH_US_EAST_1.replace("us-east-1", "eu-west-1")
    path_style = aws_target("s3.eu-west-1.amazonaws.com", "/calls/k", signed_home)
    assert path_style is not None and path_style.bucket == "calls" and path_style.path_style
    assert wrong_region_answer(REGIONS, path_style, "PUT") is None
    other = aws_target("other.s3.amazonaws.com", "/k", AUTH_US_EAST_1)
    assert other is not None and wrong_region_answer(REGIONS, other, "PUT") is None
    assert aws_target("127.0.0.1:9000", "/calls/k", AUTH_US_EAST_1) is None


def test_a_hint_without_region_names_nothing_and_leaves_head_bucket_to_the_policy() -> None:
    hintless = AwsRegions({"calls": "eu-west-1"}, hints=False)
    target = aws_target("calls.s3.amazonaws.com", "/k", AUTH_US_EAST_1)
    assert target is not None

    answer = wrong_region_answer(hintless, target, "PUT")

    assert answer is not None and (answer.status, answer.code) == (301, "PermanentRedirect")
    assert answer.headers == ()
    assert not any(name in ("Region", "Endpoint") for name, _ in answer.elements)
    assert wrong_region_answer(hintless, target, "HEAD") is None


# --- the README's failure tables -----------------------------------------------------------


def _table_names(text: str, header: str) -> set[str]:
    """Every `name` in the first column of the Markdown table under `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    names: set[str] = set()
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        names |= set(re.findall(r"`([A-Za-z0-9]+)`", line.split("|")[1]))
    return names


def test_the_readme_failure_tables_agree_with_the_code() -> None:
    text = README.read_text()
    reasons = _table_names(text, "| setting `Ready=False` reason")
    assert reasons >= settings.REFUSED, f"README lacks {settings.REFUSED - reasons}"
    # the README's transient list names the region hints; the code must agree
    transient = text[text.index("**Failures.** *Transient*") :].split("\n\n", 1)[0]
    for code in REGION_HINT_CODES:
        assert f"`{code}`" in transient
        exc = ClientError(_response(code, 400), "PutObject")  # type: ignore[arg-type]
        assert not classify(exc).fatal
