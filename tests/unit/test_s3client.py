"""S3 clients share one boto3 session's parsed models, never its credentials."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from botocore.loaders import JSONFileLoader

from voicevault.uploader.bucketurl import parse_bucket_url
from voicevault.uploader.s3client import AwsKeys, make_client, warm_up


def test_clients_share_the_parsed_model_but_each_keeps_its_own_keys() -> None:
    location = parse_bucket_url("https://bucket-one.s3.eu-west-1.amazonaws.com/calls/")
    a = make_client(location, AwsKeys("AKIAFIRSTFIRSTFIRST1", "first-secret"))
    b = make_client(location, AwsKeys("AKIASECONDSECONDSEC2", "second-secret", "token-2"))
    # one loader: botocore's S3 model is parsed once, not at every setting validation
    assert a._loader is b._loader  # type: ignore[attr-defined]
    first = a._request_signer._credentials  # type: ignore[attr-defined]
    second = b._request_signer._credentials  # type: ignore[attr-defined]
    assert (first.access_key, first.secret_key, first.token) == (
        "AKIAFIRSTFIRSTFIRST1",
        "first-secret",
        None,
    )
    assert (second.access_key, second.secret_key, second.token) == (
        "AKIASECONDSECONDSEC2",
        "second-secret",
        "token-2",
    )
    assert a.meta.region_name == "eu-west-1"
    assert a.meta.events is not b.meta.events  # handlers one client adds stay its own


def test_after_warm_up_a_client_reads_no_model_file(monkeypatch: pytest.MonkeyPatch) -> None:
    warm_up()

    def no_file(*_: object, **__: object) -> None:
        raise AssertionError("botocore read a model file after the warm-up")

    monkeypatch.setattr(JSONFileLoader, "load_file", no_file)
    location = parse_bucket_url(
        "http://127.0.0.1:9000/bucket-two/", endpoint_url="http://127.0.0.1:9000"
    )
    client = make_client(location, AwsKeys("AKIATHIRDTHIRDTHIRD3", "third-secret"))
    assert client.meta.endpoint_url == "http://127.0.0.1:9000"


def test_the_plain_loader_reads_the_same_model_as_botocores() -> None:
    """Plain dicts instead of OrderedDicts (a start cost, #19): same data, same order."""
    import botocore

    from voicevault.uploader import s3endpoints
    from voicevault.uploader.s3client import _PlainJSONFileLoader

    data = Path(botocore.__file__).parent / "data"
    for name in ("endpoints", "s3/2006-03-01/service-2", "s3/2006-03-01/endpoint-rule-set-1"):
        ours = _PlainJSONFileLoader().load_file(str(data / name))
        theirs = JSONFileLoader().load_file(str(data / name))
        if name == "endpoints":  # S3's part of it (s3endpoints)
            theirs = s3endpoints.s3_only(theirs)
        assert ours is not None and json.dumps(ours) == json.dumps(theirs), name
        assert type(ours) is dict


def test_handlers_other_than_botocores_are_still_checked_for_kwargs() -> None:
    from voicevault.uploader.s3client import _Emitter

    emitter = _Emitter()
    with pytest.raises(ValueError, match="must accept keyword arguments"):
        emitter.register("after-call.s3", lambda http_response: None)
    emitter.register("after-call.s3", lambda **_: None)  # accepted
    location = parse_bucket_url("https://bucket-one.s3.eu-west-1.amazonaws.com/calls/")
    client = make_client(location, AwsKeys("AKIAFOURTHFOURTHFOU4", "fourth-secret"))
    with pytest.raises(ValueError, match="must accept keyword arguments"):
        client.meta.events.register("after-call.s3", lambda http_response: None)


def test_the_s3_endpoints_extract_is_that_of_the_installed_botocore() -> None:
    """Stale after a botocore upgrade: `python -m voicevault.uploader.s3endpoints`."""
    from voicevault.uploader import s3endpoints

    raw = s3endpoints.botocore_file().read_bytes()
    extract = s3endpoints.extract_for(raw)
    assert extract == s3endpoints.s3_only(json.loads(raw)), "stale: rebuild the extract"
    assert s3endpoints.extract_for(raw + b" ") is None  # any other file: parsed whole


def test_the_s3_extract_resolves_every_region_as_the_whole_file() -> None:
    from botocore.regions import EndpointResolver

    from voicevault.uploader import s3endpoints

    whole = json.loads(s3endpoints.botocore_file().read_bytes())
    full, extract = EndpointResolver(whole), EndpointResolver(s3endpoints.s3_only(whole))
    regions = {r for p in whole["partitions"] for r in p["regions"]}
    regions |= {"us-nowhere-9", "cn-nowhere-9"}  # unknown regions of known partitions
    for region in sorted(regions):
        for fips, dualstack in ((False, False), (True, False), (False, True)):
            ours = _resolved(extract, region, dualstack, fips)
            assert ours == _resolved(full, region, dualstack, fips), region
        assert extract.get_partition_for_region(region) == full.get_partition_for_region(region)
    assert extract.get_available_partitions() == full.get_available_partitions()
    assert extract.get_available_endpoints("s3") == full.get_available_endpoints("s3")


def _resolved(resolver: Any, region: str, dualstack: bool, fips: bool) -> object:
    """What `construct_endpoint` gives for S3, or the error it raises."""
    try:
        return resolver.construct_endpoint("s3", region, None, dualstack, fips)
    except Exception as exc:
        return repr(exc)


def test_an_s3_client_runs_the_same_handlers_as_with_all_of_botocores() -> None:
    """The session registers only the built-in handlers that apply to S3 (a start cost)."""
    import botocore.session

    location = parse_bucket_url("https://bucket-one.s3.eu-west-1.amazonaws.com/calls/")
    ours = make_client(location, AwsKeys("AKIAFIFTHFIFTHFIFTH5", "fifth-secret"))
    theirs = botocore.session.Session().create_client(
        "s3", config=ours.meta.config, aws_access_key_id="a", aws_secret_access_key="b"
    )

    def handlers(client: Any, event: str) -> list[str]:
        found = client.meta.events._emitter._handlers.prefix_search(event)
        return [getattr(h, "__qualname__", type(h).__name__) for h in found]

    kinds = (
        *("provide-client-params", "before-parameter-build", "before-endpoint-resolution"),
        *("before-call", "request-created", "choose-signer", "before-sign", "before-send"),
        *("needs-retry", "after-call", "after-call-error", "docs.request-params"),
    )
    for operation in theirs.meta.service_model.operation_names:
        for kind in kinds:
            event = f"{kind}.s3.{operation}"
            assert handlers(ours, event) == handlers(theirs, event), event
    for event in ("creating-client-class.s3", "service-data-loaded.s3", "choose-service-name"):
        assert handlers(ours, event) == handlers(theirs, event), event
    # what is left out: other services' handlers
    assert "inject_presigned_url_ec2" in handlers(theirs, "before-call.ec2.CopySnapshot")
    assert "inject_presigned_url_ec2" not in handlers(ours, "before-call.ec2.CopySnapshot")
