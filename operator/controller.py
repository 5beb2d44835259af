"""The operator's controllers, wired together and started in order.

One `Controller` per operator process. The kopf handlers in `handlers.py` forward each
watch event to the controller of its resource:

    credentials  credentialcontroller.py   AwsCredential (and the Secrets they name)
    settings     settingcontroller.py      VoiceStorageSetting, bucket validation
    recordings   recordingcontroller.py    Recording intake, resync, settling
                 scheduler.py              uploader pods and their batches

They share the credential and setting views (`viewstore.py`) and the Event poster
(`eventposter.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from voicevault.crds import awscredential, voicestoragesetting
from voicevault.operator.background import Background
from voicevault.operator.config import OperatorConfig
from voicevault.operator.credentialcontroller import CredentialController
from voicevault.operator.eventposter import POSTERS, EventPoster
from voicevault.operator.handoff import HandoffDesk
from voicevault.operator.kube import Kube
from voicevault.operator.recordingcontroller import INTAKE_WORKERS, RecordingController
from voicevault.operator.settingcontroller import SettingController
from voicevault.operator.shared import Shared
from voicevault.operator.viewstore import ViewStore
from voicevault.uploader.s3client import warm_up

Clock = Callable[[], datetime]
# A clean stop lets the work under way finish this long: within the pod's 30 s of
# termination grace, 5 of which its preStop pause takes
STOP_DRAIN_S = 15.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class Controller:
    def __init__(
        self,
        kube: Kube,
        config: OperatorConfig,
        clock: Clock = utcnow,
        desk: HandoffDesk | None = None,
    ) -> None:
        self.kube = kube
        self.config = config
        self.store = ViewStore(kube)
        self.events = EventPoster(kube)
        self.background = Background()
        shared = Shared(kube, config, self.store, self.events, clock)
        self.settings = SettingController(shared, ready=self._setting_ready)
        self.credentials = CredentialController(shared, self.settings)
        self.recordings = RecordingController(shared, self.settings, self.background)
        self.scheduler = self.recordings.scheduler
        self.desk = desk  # running pods ask for more work there
        self._tasks: list[asyncio.Task[None]] = []

    def _setting_ready(self, namespace: str) -> None:
        self.recordings.redrive_waiting(namespace)

    async def start(self) -> None:
        """Load credentials and settings before any Recording is looked at, adopt pods."""
        await asyncio.to_thread(warm_up)  # the S3 model, once, before the first validation
        for body in await self.kube.list_objects(awscredential.PLURAL):
            await self.credentials.on_credential(body, refresh_settings=False)
        for body in await self.kube.list_objects(voicestoragesetting.PLURAL):
            await self.settings.on_setting(body)
        await self.scheduler.adopt_existing_pods()
        if self.desk is not None:
            self.scheduler.desk = self.desk
            self.desk.attach(asyncio.get_running_loop(), self.scheduler.more_work)
        self._tasks = [
            asyncio.create_task(self.scheduler.run(), name="scheduler"),
            asyncio.create_task(self.settings.validation_loop(), name="validation"),
            asyncio.create_task(self.recordings.resync_loop(), name="resync"),
            *(
                asyncio.create_task(self.recordings.intake_worker(), name=f"recordings-{i}")
                for i in range(INTAKE_WORKERS)
            ),
            *(asyncio.create_task(self.events.run(), name=f"events-{i}") for i in range(POSTERS)),
        ]

    async def stop(self, drain: float = STOP_DRAIN_S) -> None:
        """Take no new work, let the work under way finish (`drain` seconds at most), then
        cancel what is left. A leader that stops cleanly releases its Lease after this.

        Work cut off halfway is done again by the next leader, once more than needed: a
        settlement whose callback is on its way is called back a second time, a batch
        marked Scheduled before its pod exists becomes a second attempt.
        """
        if self.desk is not None:
            self.desk.detach()  # pods asking for more from now on end their run
        self.scheduler.stop()  # its loop ends once the tick under way is done
        finishing = [t for t in self._tasks if t.get_name() == "scheduler"]
        posting = [t for t in self._tasks if t.get_name().startswith("events-")]
        taking = [t for t in self._tasks if t not in finishing and t not in posting]
        for task in taking:
            task.cancel()
        await asyncio.gather(*taking, return_exceptions=True)
        # settlements (their callbacks included) and the other background work
        under_way = [*finishing, *self.background.tasks()]
        if under_way:
            await asyncio.wait(under_way, timeout=drain)
        left = [t for t in (*self._tasks, *self.background.tasks()) if not t.done()]
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)

    async def resync_all(self) -> None:
        """Every recording that has something to decide, new ones included: on start, when
        the watch's events so far went by unhandled (a standby's, or during the start)."""
        await self.recordings.resync_once(everything=True)

    def probe(self) -> dict[str, Any]:
        return {
            "queued": len(self.scheduler.queues),
            "uploader_pods": len(self.scheduler.active),
            "settings": len(self.store.settings),
            "recordings": len(self.recordings.phases),
            "recording_events_waiting": len(self.recordings.intake),
        }

    # -- Secrets: read by credentials and by the settings that sign callbacks ----------------

    async def on_secret(self, namespace: str, name: str) -> None:
        """A Secret changed: re-check the credentials that use it, and the setting that
        signs its callbacks with it."""
        await self.credentials.on_secret(namespace, name)
        if self.store.signing_secrets.get(namespace) == name:
            await self.settings.refresh(namespace)

    def notice_secret(self, namespace: str, name: str) -> None:
        """A Secret's metadata changed (the watch brings no body): re-read it if it is used."""
        if self.store.uses_secret(namespace, name):
            self.store.secret_changes += 1
            self.background.spawn(self.on_secret(namespace, name))
