"""`--workers N`: N REST worker processes on one listening socket, KServe's multiprocess mode for this runtime.

KServe's `RESTServerMultiProcess` binds the socket in the parent, spawns the workers on it, pings each one and
replaces a dead or hung worker, and SIGTERMs them all on shutdown. Its workers unpickle the parent's REST app
with its models; a bundle model (a TorchScript program, a request-log thread) does not pickle, so here each
worker is started from the command line instead: it parses the same arguments, loads the bundle from the
directory the parent already fetched and verified, and serves the same front and KServe app.

What makes N processes read as one server:
- metrics: prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by `python -m serving` before
  anything imports prometheus_client): every process writes its samples to files there and `/metrics`, in
  whichever worker answers, sums them all (serving/observability.py). A dead worker's counts stay counted;
- request logs: each process has its own writer (its own files, named by pid and a random id), flushed on
  SIGTERM, so every row is logged once, by the worker that answered it.
gRPC stays in the parent, as in KServe, with its own model, metrics and request log. The worker's entry point
is `serving.cli.run_worker`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from socket import socket
from typing import Any

from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.protocol.rest.multiprocess.server import RESTServerMultiProcess, RESTServerProcess

log = logging.getLogger(__name__)

STARTUP_GRACE_S = 180.0  # how long a starting worker may take before it must answer pings (loads torch and the bundle)
LOAD_FAILED = 3  # a worker's exit code when it cannot load the bundle: restarting it would not help


class WorkerProcesses(RESTServerMultiProcess):
    """KServe's supervisor with workers started by `target(sockets=...)` (picklable) rather than the parent's app."""

    def __init__(self, target: Callable[..., None], host: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(FASTAPI_APP_IMPORT_STRING, *args, **kwargs)
        self._rest_server.config.host = host
        self._target = target
        self.failure: str | None = None
        self._born: dict[int, float] = {}  # id(process) -> when it was started (monotonic)

    def _spawn(self, sockets: list[socket]) -> RESTServerProcess:
        process = RESTServerProcess(sockets, self._target, log_config_file=self.log_config_file)
        process.start()
        self._born[id(process)] = time.monotonic()
        log.info("worker started", extra={"pid": process.pid})
        return process

    def init_processes(self, sockets: list[socket]) -> None:
        for _ in range(self._rest_server.config.workers):
            self._processes.append(self._spawn(sockets))

    async def keep_subprocess_alive(self, sockets: list[socket]) -> None:
        """As KServe's: a dead or unresponsive worker is replaced; but one that could not load the bundle stops
        the server (a new one would fail the same way, forever)."""
        if self.should_exit.is_set():
            return
        for i, process in enumerate(self._processes):
            # A worker answers KServe's ping only once its interpreter is up (spawn, imports): on a loaded node that
            # took longer than the ping's 5 s, and KServe's loop killed every starting worker, forever (measured:
            # 12 starts in a minute, load ~8 on 2 cores). A live worker within its start-up grace is left alone.
            starting = time.monotonic() - self._born.get(id(process), 0.0) < STARTUP_GRACE_S
            if process._process.is_alive() and (starting or process.ping()):
                continue
            exitcode = process._process.exitcode
            process.kill()
            await process.wait_for_termination()
            if self.should_exit.is_set():
                return
            if exitcode == LOAD_FAILED:
                self.failure = f"worker {process.pid} could not load the model bundle"
                log.error("stopping: a worker could not load the model bundle", extra={"pid": process.pid})
                self.should_exit.set()
                return
            log.warning("worker died or hung; starting another", extra={"pid": process.pid, "exitcode": exitcode})
            self._born.pop(id(process), None)
            self._processes[i] = self._spawn(sockets)

    async def start(self) -> None:
        try:
            await super().start()
        except asyncio.CancelledError:  # the parent is stopping: the workers stop with it
            await self.terminate_all()
            raise
