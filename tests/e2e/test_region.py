"""Region-less bucket URLs through a real API server and the operator process: the
operator reaches the bucket by its AWS host names (through the fault proxy in AWS mode,
on loopback) and the proxy answers wrong-region requests as S3 does.

The setting shows the bucket's region it found, a hint that names no region is a clear
Ready=False that keeps the media, and a region the bucket contradicts is refused, by the
controller and, once the region is known, by the admission webhook.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tests.bed.aws_names import AwsTls, aws_client_env, aws_tls
from tests.bed.faultproxy import AwsRegions, FaultProxy
from tests.bed.s3_moto import MotoS3
from tests.bed.stack import Account, Stack
from tests.bed.stack_fixtures import own_stack, running
from tests.support.kube import wait_for
from voicevault import API_GROUP, API_VERSION

pytestmark = [pytest.mark.kube, pytest.mark.s3, pytest.mark.slow]
HOME = "eu-west-1"
STALE = "us-west-2"
SETTING_HOOK = 'admission webhook "voicestoragesettings.voicevault.io" denied the request'


@pytest.fixture(scope="module")
def regions() -> AwsRegions:
    return AwsRegions({})


@pytest.fixture(scope="module")
def aws_proxy(
    moto_s3: MotoS3, regions: AwsRegions, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FaultProxy, AwsTls]]:
    tls = aws_tls(tmp_path_factory.mktemp("aws-tls"), [HOME, STALE])
    with FaultProxy(moto_s3.endpoint_url, tls=tls.context, regions=regions) as proxy:
        yield proxy, tls


@pytest.fixture(scope="module")
def aws_stack(
    moto_s3: MotoS3,
    aws_proxy: tuple[FaultProxy, AwsTls],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    proxy, tls = aws_proxy
    env = aws_client_env(proxy.url, tls.ca_bundle)
    with own_stack(moto_s3, tmp_path_factory, "region", webhook=True, operator_env=env) as stack:
        yield stack


@pytest.fixture
def live(aws_stack: Stack) -> Stack:
    return running(aws_stack)


def _account(stack: Stack, regions: AwsRegions, *, hints: bool = True) -> Account:
    """An account whose bucket "lives in" HOME (as the proxy tells it)."""
    account = stack.add_account()
    regions.buckets[account.s3.bucket] = HOME
    if not hints:
        regions.without_hints.add(account.s3.bucket)
    return account


def _aws_url(account: Account, region: str | None = None) -> str:
    host = f"{account.s3.bucket}.s3.{region}." if region else f"{account.s3.bucket}.s3."
    return f"https://{host}amazonaws.com/{account.s3.prefix}"


def _point_at_aws(stack: Stack, account: Account, url: str) -> int:
    """Drop the endpoint override and use `url`; returns the new generation."""
    body: Any = stack.custom.patch_namespaced_custom_object(
        API_GROUP,
        API_VERSION,
        account.namespace,
        "voicestoragesettings",
        "default",
        {"spec": {"externalStorage": {"bucketUrl": url, "endpointUrl": None}}},
    )
    return int(body["metadata"]["generation"])


def _settled(stack: Stack, account: Account, generation: int) -> dict[str, Any]:
    """The setting once the operator validated `generation`."""

    def validated() -> dict[str, Any] | None:
        body = stack.get(account.namespace, "voicestoragesettings", "default")
        status = body.get("status") or {}
        done = status.get("validatedGeneration") == generation
        return status if done and status.get("observedGeneration") == generation else None

    return wait_for(validated, timeout=60, what=f"generation {generation} validated")


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_a_region_less_url_finds_the_region_and_a_contradiction_is_refused(
    live: Stack, regions: AwsRegions, aws_proxy: tuple[FaultProxy, AwsTls]
) -> None:
    proxy, _ = aws_proxy
    account = _account(live, regions)

    status = _settled(live, account, _point_at_aws(live, account, _aws_url(account)))

    ready, validated = _condition(status, "Ready"), _condition(status, "Validated")
    assert ready["status"] == "True", ready
    assert validated["status"] == "True" and HOME in validated["message"], validated
    assert status["bucketRegion"] == HOME
    assert status["parsed"]["region"] == "us-east-1", "the URL names none"
    assert f"{account.s3.bucket}.s3.amazonaws.com:443" in proxy.tunnels
    assert any(r.fault == "WrongRegion" and r.status == 400 for r in proxy.requests)

    # the region is known now: naming another one is refused when it is applied
    with pytest.raises(ApiException) as refused:
        _point_at_aws(live, account, _aws_url(account, STALE))
    message = json.loads(refused.value.body or "{}")["message"]
    assert SETTING_HOOK in message
    assert f"is in region '{HOME}'" in message and f"'{STALE}'" in message


def test_a_named_region_the_bucket_contradicts_is_not_ready(
    live: Stack, regions: AwsRegions
) -> None:
    account = _account(live, regions)

    status = _settled(live, account, _point_at_aws(live, account, _aws_url(account, STALE)))

    ready = _condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "RegionMismatch"), ready
    assert f"is in region '{HOME}'" in ready["message"] and f"'{STALE}'" in ready["message"]


def test_a_hint_without_region_is_a_clear_condition_and_the_media_is_kept(
    live: Stack, regions: AwsRegions
) -> None:
    account = _account(live, regions, hints=False)

    status = _settled(live, account, _point_at_aws(live, account, _aws_url(account)))

    ready = _condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "RegionUnknown"), ready
    assert "region could not be found" in ready["message"]
    assert "bucketUrl" in ready["message"] and "Traceback" not in ready["message"]
    assert status.get("bucketRegion") is None

    live.record(account, "waits", os.urandom(4096))
    pending = live.wait_phase(account.namespace, "waits", "Pending")["status"]
    media = live.media_file(live.nodes[0], account.namespace, "2026/11/waits.wav")
    assert pending.get("reason") == "SettingNotReady", pending
    assert media.exists(), "the media is kept"
