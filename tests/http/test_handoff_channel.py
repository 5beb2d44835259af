"""A running pod's request for more work, over real HTTPS on loopback (#19): the uploader's
client against the operator's server, the certificate pinned, the token required, one
kept connection for batch after batch."""

from __future__ import annotations

import asyncio
import http.client
import select
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus

import pytest

from tests.support.samples import batch_item
from voicevault.contract import BatchOutcome, BatchSpec, HandoffFile, ItemResult, MoreRequest
from voicevault.operator import webhook, webhookcert
from voicevault.operator.handoff import HandoffDesk, RefusalError
from voicevault.operator.webhook import AdmissionServer, ReloadingContext
from voicevault.uploader.handoff import HandoffClient, HandoffError

TOKEN = "pod-token-SECRET"


@dataclass
class Operator:
    server: AdmissionServer
    desk: HandoffDesk
    loop: asyncio.AbstractEventLoop
    asked: list[tuple[MoreRequest, str]] = field(default_factory=list)
    refuse: RefusalError | None = None
    accepted: int = 0  # TCP connections the server took

    async def more_work(self, request: MoreRequest, token: str) -> BatchSpec:
        self.asked.append((request, token))
        if self.refuse is not None:
            raise self.refuse
        item = batch_item(uid=f"u-{request.chunk + 1}")
        return BatchSpec(pod=request.pod, node="node-a", items=[item], chunk=request.chunk + 1)

    def handoff(self, fingerprint: str | None = None, token: str = TOKEN) -> HandoffFile:
        address = self.desk.address()
        assert address is not None
        url, pinned = address
        return HandoffFile(url=url, fingerprint=fingerprint or pinned, token=token)


@pytest.fixture
def operator() -> Iterator[Operator]:
    pair = webhookcert.plan(None, webhookcert.CertPolicy(hosts=("127.0.0.1",)), datetime.now(UTC))
    tls = ReloadingContext()
    tls.load(pair.data[webhookcert.TLS_CERT], pair.data[webhookcert.TLS_KEY])
    loop = asyncio.new_event_loop()
    looping = threading.Thread(target=loop.run_forever, daemon=True)
    looping.start()
    desk = HandoffDesk(None, lambda: tls.cert)
    server = AdmissionServer(("127.0.0.1", 0), tls, desk=desk)
    desk.url = f"https://127.0.0.1:{server.server_address[1]}"
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    op = Operator(server, desk, loop)
    accept = server.get_request

    def counted() -> tuple[object, object]:
        op.accepted += 1
        return accept()

    server.get_request = counted  # type: ignore[method-assign]
    desk.attach(loop, op.more_work)
    yield op
    server.shutdown()
    server.server_close()
    loop.call_soon_threadsafe(loop.stop)
    looping.join(5)
    loop.close()


def ask_for_more(handoff: HandoffFile, request: MoreRequest) -> BatchSpec:
    client = HandoffClient(handoff)
    try:
        return client.ask(request)
    finally:
        client.close()


def _request(chunk: int = 0) -> MoreRequest:
    outcome = BatchOutcome(results=[ItemResult(kind="completed")], chunk=chunk)
    return MoreRequest(pod="vv-upload-a", chunk=chunk, outcome=outcome)


def test_a_pod_gets_its_next_batch_for_the_results_of_the_last(operator: Operator) -> None:
    following = ask_for_more(operator.handoff(), _request(0))
    assert following.chunk == 1 and [i.uid for i in following.items] == ["u-1"]
    ((request, token),) = operator.asked
    assert token == TOKEN and request == _request(0)


def test_another_certificate_is_never_sent_the_token(operator: Operator) -> None:
    with pytest.raises(HandoffError, match="another certificate") as caught:
        ask_for_more(operator.handoff(fingerprint="0" * 64), _request())
    assert operator.asked == []  # nothing was sent after the handshake
    assert TOKEN not in str(caught.value)


def test_a_refusal_ends_the_pods_run_with_the_operators_answer(operator: Operator) -> None:
    operator.refuse = RefusalError(HTTPStatus.FORBIDDEN, "not a pod this operator runs")
    with pytest.raises(HandoffError, match="403") as caught:
        ask_for_more(operator.handoff(token="stolen"), _request())
    assert "stolen" not in str(caught.value)


def test_an_operator_that_does_not_lead_answers_no_work(operator: Operator) -> None:
    handoff = operator.handoff()  # given while it led
    operator.desk.detach()
    assert operator.desk.address() is None  # a pod launched now is not told to ask
    with pytest.raises(HandoffError, match="503"):
        ask_for_more(handoff, _request())


def test_without_a_bearer_token_the_request_is_not_read(operator: Operator) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(
        "127.0.0.1", operator.server.server_address[1], context=context, timeout=10
    )
    try:
        conn.request("POST", "/v1/uploader/more", _request().to_json().encode())
        assert conn.getresponse().status == HTTPStatus.UNAUTHORIZED
    finally:
        conn.close()
    assert operator.asked == []


def test_an_unreachable_operator_is_a_plain_reason(operator: Operator) -> None:
    handoff = operator.handoff()
    operator.server.shutdown()
    operator.server.server_close()
    with pytest.raises(HandoffError, match="cannot reach the operator"):
        ask_for_more(handoff, _request())


def test_batch_after_batch_goes_over_one_connection(operator: Operator) -> None:
    client = HandoffClient(operator.handoff())
    try:
        chunks = [client.ask(_request(chunk)).chunk for chunk in range(5)]
    finally:
        client.close()
    assert chunks == [1, 2, 3, 4, 5]
    assert [r.chunk for r, _ in operator.asked] == [0, 1, 2, 3, 4]
    assert client.connections == 1 and operator.accepted == 1


def test_a_connection_the_operator_dropped_is_replaced_and_checked_again(
    operator: Operator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhook._Handler, "timeout", 0.2)  # the server drops idle ones soon
    client = HandoffClient(operator.handoff())
    try:
        client.ask(_request(0))
        kept = client._conn
        assert kept is not None and kept.sock is not None
        readable, _, _ = select.select([kept.sock], [], [], 10)  # the server's close arrives
        assert readable
        assert client.ask(_request(1)).chunk == 2
    finally:
        client.close()
    assert [r.chunk for r, _ in operator.asked] == [0, 1]  # each request read once
    assert client.connections == 2 and operator.accepted == 2
