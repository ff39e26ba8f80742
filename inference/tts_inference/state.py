"""ServerState: what the HTTP layer reads on every request (flags, counters, the runtime)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tts_inference.metrics import ServerMetrics
from tts_inference.settings import ServerSettings

if TYPE_CHECKING:
    from tts_inference.jobs import JobManager
    from tts_inference.runtime import Runtime
    from tts_inference.serving import SpeechService


@dataclass
class ServerState:
    settings: ServerSettings
    metrics: ServerMetrics
    runtime: Runtime | None = None
    ready: bool = False
    draining: bool = False
    failed: str | None = None
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    loader: asyncio.Task[None] | None = None
    on_failure: Callable[[str], None] | None = None

    @property
    def service(self) -> SpeechService | None:
        return self.runtime.service if self.runtime is not None else None

    @property
    def jobs(self) -> JobManager | None:
        return self.runtime.jobs if self.runtime is not None else None

    def readiness(self) -> tuple[bool, str]:
        if self.failed:
            return False, f"model failed to load: {self.failed}"
        if self.draining:
            return False, "draining: the server is shutting down"
        if not self.ready:
            return False, "loading: the model is loading or warming up"
        return True, "ready"
