"""KServe's ModelServer, with the lean front (serving/front.py) before its REST app and a bind address.

Stock `ModelServer.start()` binds REST to 0.0.0.0 and gRPC to [::] with no way to choose. This subclass
keeps KServe's model registry, DataPlane, REST endpoints, gRPC servicer, signal handling and event-loop
setup, and changes only where the servers listen and what sits in front of the REST app. With `--workers N`
the REST app runs in N worker processes (serving/workers.py), as KServe's multiprocess mode does.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent import futures
from typing import Any

from kserve import ModelServer
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.rest.server import RESTServer

from serving.front import FrontApp
from serving.model import BundleModel
from serving.transport import CoalescingHttpToolsProtocol
from serving.workers import WorkerProcesses

log = logging.getLogger(__name__)


class BundleServicer(InferenceServicer):
    """KServe's gRPC servicer; this model's metadata as REST serves it (KServe's leaves out version and platform)."""

    def __init__(self, model: BundleModel, *args: Any) -> None:
        super().__init__(*args)
        self._model = model

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        if request.name != self._model.name or not self._model.ready:
            return await super().ModelMetadata(request, context)
        meta = self._model.metadata()
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"], inputs=meta["inputs"], outputs=meta["outputs"]
        )


class BoundGRPCServer(GRPCServer):
    """KServe's gRPC inference service on a chosen address (KServe's own listens on [::] only)."""

    def __init__(self, host: str, port: int, model: BundleModel, *args: Any, **kwargs: Any) -> None:
        super().__init__(port, *args, **kwargs)
        self._host = host
        self._model = model

    async def start(self, max_workers: int) -> None:
        from grpc import aio

        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            # KServe's per-call logging interceptor is left out: one log line per RPC is too many.
            interceptors=(ExceptionToStatusInterceptor(),),
            options=[
                ("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                ("grpc.max_receive_message_length", self._kwargs.get("grpc_max_receive_message_length")),
            ],
        )
        servicer = BundleServicer(self._model, self._data_plane, self._model_repository_extension)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        address = f"[{self._host}]:{self._port}" if ":" in self._host else f"{self._host}:{self._port}"
        if self._server.add_insecure_port(address) == 0:
            raise RuntimeError(f"cannot listen for gRPC on {address}")
        log.info("gRPC listening", extra={"address": address})
        await self._server.start()
        await self._server.wait_for_termination()


class BundleModelServer(ModelServer):
    def __init__(
        self, *, host: str, grpc_host: str, max_body_bytes: int, log_requests: bool, grpc_options: dict[str, Any], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.host = host
        self.grpc_host = grpc_host
        self.max_body_bytes = max_body_bytes
        self.log_requests = log_requests
        self.grpc_options = grpc_options
        self.front: FrontApp | None = None
        self.worker_target: Callable[..., None] | None = None  # with workers > 1: how a worker process starts

    def start(self, models: list[Any]) -> None:
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        bundle_models = [m for m in models if isinstance(m, BundleModel)]
        if len(bundle_models) != 1:
            raise ValueError("the bundle runtime serves exactly one BundleModel per process")
        self._register_and_check_atleast_one_model_is_ready(models)
        if self.workers > 1:
            if self.worker_target is None:
                raise ValueError("--workers > 1 needs worker_target (python -m serving sets it)")
            self._rest_multiprocess_server = WorkerProcesses(
                self.worker_target,
                self.host,
                self.dataplane,
                self.model_repository_extension,
                self.http_port,
                workers=self.workers,
                grace_period=self.grace_period,
                event_loop=self.event_loop,
                timeout_keep_alive=self.timeout_keep_alive,
                ssl_certfile=self.ssl_certfile,
                ssl_keyfile=self.ssl_keyfile,
            )
            self.servers.append(self._rest_multiprocess_server.start())
            log.info(
                "REST workers listening",
                extra={"address": f"{self.host}:{self.http_port}", "workers": self.workers, "model": bundle_models[0].name},
            )
        else:
            self._rest_server = self.rest_server(bundle_models[0])
            self.servers.append(self._rest_server.start())
            log.info("REST listening", extra={"address": f"{self.host}:{self.http_port}", "model": bundle_models[0].name})
        if self.enable_grpc:
            self._grpc_server = BoundGRPCServer(
                self.grpc_host,
                self.grpc_port,
                bundle_models[0],
                self.dataplane,
                self.model_repository_extension,
                kwargs=self.grpc_options,
                grace_period=self.grace_period,
            )
            self.servers.append(self._grpc_server.start(self.max_threads))
        self.register_signal_handler()
        with asyncio.Runner(loop_factory=_loop_factory(self.event_loop)) as runner:
            runner.run(self._serve())
        failure = getattr(self._rest_multiprocess_server, "failure", None)
        if failure:
            raise RuntimeError(failure)

    def rest_server(self, model: BundleModel) -> RESTServer:
        """KServe's REST server (one process) with the front before its app; a worker process runs one too."""
        rest = RESTServer(
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            access_log_format=self.access_log_format,
            workers=1,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
        )
        from kserve.model_server import app as kserve_app

        self.front = FrontApp(model, kserve_app, self.max_body_bytes, self.log_requests)
        rest.config.app = self.front  # RESTServer.start() still registers KServe's routes on kserve_app
        rest.config.http = CoalescingHttpToolsProtocol  # one socket write per response (serving/transport.py)
        rest.config.host = self.host
        if not self.log_requests:
            # The front logs refusals as JSON and metrics count the rest: no line per request from uvicorn
            # (it checks for handlers in reach, so the logger is cut off) nor from KServe's timing middleware.
            access = logging.getLogger("uvicorn.access")
            access.handlers, access.propagate = [], False
            logging.getLogger("kserve.trace").setLevel(logging.WARNING)
        return rest

    async def _serve(self) -> None:
        # KServe's setup_event_loop() configures the loop it finds before asyncio.run() makes a new one;
        # here the executor and exception handler go on the loop that really runs.
        loop = asyncio.get_running_loop()
        workers = self.max_asyncio_workers or min(32, (os.cpu_count() or 1) + 4)
        loop.set_default_executor(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="infer"))
        loop.set_exception_handler(self.default_exception_handler)
        tasks = [asyncio.ensure_future(server) for server in self.servers]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if pending and getattr(self._rest_multiprocess_server, "failure", None):
            # The REST workers stopped on their own (a worker cannot load the bundle): gRPC must not keep the
            # process alive and half-serving; it stops too, and the process exits with the failure.
            if self._grpc_server is not None:
                await self._grpc_server.stop()
        await asyncio.gather(*tasks)


def _loop_factory(event_loop: str) -> Any:
    """uvloop for 'auto' (when installed) and 'uvloop'; the standard loop for 'asyncio'."""
    if event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if event_loop == "uvloop":
            raise
        return None
    return uvloop.new_event_loop
