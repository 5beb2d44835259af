"""kopf handlers: thin. Each forwards a watch event to its resource's controller.

Only the leader acts (`operator/leader.py`). A standby's watches run, warm, and its
handlers drop what they see: on taking the Lease, the controller reads everything afresh.

Level-based `on.event` handlers are used instead of kopf's change-detection handlers, so
kopf writes nothing into our objects (no annotations, no finalizers of its own): the
operator's only writes are the ones the rules decide, which keeps GitOps diffs clean and
the number of API writes per recording small.
"""

from __future__ import annotations

from typing import Any

import kopf

from voicevault import API_GROUP, API_VERSION
from voicevault.crds import awscredential, recording, voicestoragesetting
from voicevault.operator.bodies import plain, slim
from voicevault.operator.controller import Controller


class NoDiffBase(kopf.DiffBaseStorage):
    """No change detection: every handler here is an `on.event` one, which needs none.

    kopf builds and diffs each event's "essence" (a deep copy of the body) whatever the
    handlers; with thousands of Recording events that was a tenth of the operator's CPU.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def _controller(memo: Any) -> Controller:
    controller: Controller = memo.controller
    return controller


async def _acting(memo: Any, *, wait: bool = True) -> Controller | None:
    """The controller once this replica leads and has started it; None on a standby.

    A credential or setting event that arrives while the controller starts waits for it,
    so it is applied after the start's own reads, never before. A Recording event then is
    dropped instead (`wait=False`): a backlog would pile up bodies inside kopf, and the
    start lists every recording once it is done.
    """
    if not memo.leading.is_set() or (not wait and not memo.started.is_set()):
        return None
    await memo.started.wait()
    return _controller(memo)


def register(registry: kopf.OperatorRegistry) -> None:
    """Register every handler on `registry` (the operator builds a fresh one)."""

    @kopf.on.event(API_GROUP, API_VERSION, awscredential.PLURAL, registry=registry)
    async def credential_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
        controller = await _acting(memo)
        if controller is None:
            return
        body = plain(event["object"])
        if event.get("type") == "DELETED":
            meta = body["metadata"]
            controller.credentials.forget(meta["namespace"], meta["name"])
            return
        await controller.credentials.on_credential(body)

    @kopf.on.event(API_GROUP, API_VERSION, voicestoragesetting.PLURAL, registry=registry)
    async def setting_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
        controller = await _acting(memo)
        if controller is None:
            return
        body = plain(event["object"])
        if event.get("type") == "DELETED":
            meta = body["metadata"]
            controller.settings.forget(meta["namespace"], meta["name"])
            return
        await controller.settings.on_setting(body)

    @kopf.on.event(API_GROUP, API_VERSION, recording.PLURAL, registry=registry)
    async def recording_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
        # handed over, not handled here: kopf's per-object worker ends at once and no
        # burst of recordings piles up full event bodies inside kopf
        controller = await _acting(memo, wait=False)
        if controller is not None:
            deleted = event.get("type") == "DELETED"
            controller.recordings.submit(slim(event["object"]), deleted=deleted)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """The same credentials as the kubernetes client: in-cluster, else kubeconfig."""
        return kopf.login_via_client(**kwargs)

    @kopf.on.probe(id="voicevault", registry=registry)
    def probe(memo: Any, **_: Any) -> dict[str, Any]:
        return _controller(memo).probe()
