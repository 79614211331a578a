"""How a server process ends: drained on SIGTERM, loudly when its engine dies.

SIGTERM (or a first Ctrl-C): new requests get 503 and /health says "draining"; running ones
get `drain_timeout_s` to finish; whatever is still running then gets an error in its own
protocol; then uvicorn stops and the process exits 0. A second Ctrl-C stops at once.

Engine death: every waiting client already has its error (AsyncLLMEngine.fail_all); /health
answers 503; a moment later the server stops and the process exits 1, so that a supervisor
(systemd, Kubernetes, `serve --replicas`) starts a fresh one.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time

import uvicorn

from ..engine.async_engine import EngineDeadError

log = logging.getLogger("tokenmill")
_ERROR_FLUSH_S = 1.0  # time for the last error events to reach their clients


class ServingProcess(uvicorn.Server):
    """uvicorn's server with a draining first signal."""

    def __init__(self, app, config: uvicorn.Config):
        super().__init__(config)
        self.app = app
        app.state.process = self
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        state = self.app.state.tm
        if state.draining or self.loop is None:
            if sig == signal.SIGINT and self.should_exit:
                self.force_exit = True
            self.should_exit = True
            return
        state.draining = True
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(drain(self)))

    def stop(self, exit_code: int = 0) -> None:
        self.app.state.tm.exit_code = max(self.app.state.tm.exit_code, exit_code)
        self.should_exit = True


async def drain(process: ServingProcess) -> None:
    state = process.app.state.tm
    engines = state.pool.engines()
    timeout = state.settings.drain_timeout_s
    log.warning("tokenmill: draining: new requests get 503; running ones have %.0f s to finish", timeout)
    deadline = time.monotonic() + timeout
    while any(e.has_work() for e in engines) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    busy = [e for e in engines if e.has_work()]
    for engine in busy:
        engine.fail_all(EngineDeadError(f"the server shut down before the request finished "
                                        f"(drain timeout {timeout:.0f} s)"))
    if busy:
        await asyncio.sleep(_ERROR_FLUSH_S)
    process.stop(0)


async def watch_engine(app) -> None:
    """Stops the process (exit code 1) once the engine thread has died."""
    state = app.state.tm
    while True:
        await asyncio.sleep(0.1)
        if state.engine_error:
            break
    log.error("tokenmill: the engine failed (%s); exiting with code 1 so that it is restarted",
              state.engine_error)
    await asyncio.sleep(_ERROR_FLUSH_S)
    process = getattr(app.state, "process", None)
    if process is not None:
        process.stop(1)
