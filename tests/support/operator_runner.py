"""The real Kopf runtime (``kopf.operator``) in-process, on its own thread, stoppable and restartable.

The operator tests start it against the test control plane (tests/support/cluster.py);
it logs in through the kubeconfig that KUBECONFIG names, as ``kopf run`` does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Self

import kopf


class OperatorRunner:
    """Kopf's runtime (``kopf.operator``) on its own thread and event loop, stoppable and restartable.

    Kopf logs in through the registry's login handlers, as in production: the default
    registry's ``login_via_client`` reads the kubeconfig KUBECONFIG names (the ``api``
    fixture points it at the emulator). A registry without any login handler (a bare
    ``kopf.OperatorRegistry()``) gets ``kopf.login_with_kubeconfig``, which reads the same file.
    """

    def __init__(
        self,
        registry: kopf.OperatorRegistry | None = None,
        *,
        namespaces: Iterable[str] = ("tts-test",),
        clusterwide: bool = False,
        standalone: bool = True,
        peering_name: str | None = None,
        settings: Callable[[], kopf.OperatorSettings] | None = None,
        memo: object | None = None,
    ) -> None:
        self.registry = registry if registry is not None else kopf.get_default_registry()
        self.namespaces = list(namespaces)
        self.clusterwide = clusterwide
        self.standalone = standalone
        self.peering_name = peering_name
        self.settings_factory = settings or kopf.OperatorSettings
        self.memo = memo
        self.starts = 0
        self.settings: kopf.OperatorSettings | None = None
        self._thread: threading.Thread | None = None
        self._stop_flag = threading.Event()
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._exited: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._error: BaseException | None = None
        handlers = self.registry._activities.get_all_handlers()
        if not any(handler.activity == "authentication" for handler in handlers):
            kopf.on.login(registry=self.registry, id="login_with_kubeconfig")(
                kopf.login_with_kubeconfig
            )

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 15.0) -> Self:
        """Start Kopf and return once its startup handlers ran (watches begin right after)."""
        if self.running:
            raise RuntimeError("the operator is already running")
        self._stop_flag = threading.Event()
        self._ready = concurrent.futures.Future()
        self._exited = concurrent.futures.Future()
        self._error = None
        self.settings = self.settings_factory()
        self._thread = threading.Thread(target=self._run, name=f"kopf-{self.starts}", daemon=True)
        self.starts += 1
        self._thread.start()
        done, _ = concurrent.futures.wait(
            [self._ready, self._exited], timeout, concurrent.futures.FIRST_COMPLETED
        )
        if self._ready not in done:
            self.stop()
            raise RuntimeError(f"the operator did not become ready in {timeout}s") from self._error
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Ask Kopf to exit (as on SIGTERM) and wait for its thread; re-raise a crash."""
        thread = self._thread
        if thread is None:
            return
        self._stop_flag.set()
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"the operator did not stop in {timeout}s")
        self._thread = None
        if self._error is not None:
            raise RuntimeError("the operator crashed") from self._error

    def restart(self, timeout: float = 15.0) -> Self:
        """An operator restart: the same registry, a fresh runtime and fresh settings."""
        self.stop(timeout)
        return self.start(timeout)

    def _run(self) -> None:
        try:
            asyncio.run(
                kopf.operator(
                    registry=self.registry,
                    settings=self.settings,
                    namespaces=self.namespaces,
                    clusterwide=self.clusterwide,
                    standalone=self.standalone,
                    peering_name=self.peering_name,
                    stop_flag=self._stop_flag,
                    ready_flag=self._ready,
                    memo=self.memo,
                )
            )
        except BaseException as e:
            self._error = e
        finally:
            self._exited.set_result(None)
