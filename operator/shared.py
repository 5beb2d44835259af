"""What the controllers and the scheduler of one operator process share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from voicevault.operator.config import OperatorConfig
from voicevault.operator.eventposter import EventPoster
from voicevault.operator.kube import Kube
from voicevault.operator.viewstore import ViewStore


@dataclass(frozen=True)
class Shared:
    kube: Kube
    config: OperatorConfig
    store: ViewStore  # credential and setting views
    events: EventPoster
    clock: Callable[[], datetime]


class Part:
    """A controller (or the scheduler): reaches what is shared as its own attributes."""

    def __init__(self, shared: Shared) -> None:
        self.kube = shared.kube
        self.config = shared.config
        self.store = shared.store
        self.events = shared.events
        self.clock = shared.clock
