"""The command line of `python -m serving --model_name NAME --model_dir DIR_OR_S3 [KServe flags] [serving flags]`.

In a pod (no `--bind_host`) REST listens on 0.0.0.0:--http_port and gRPC on [::]:--grpc_port (8081), as
KServe's ModelServer does. On a laptop `--bind_host 127.0.0.1` keeps both on loopback; there gRPC runs only
when `--grpc_port` is given, so several local servers never fight over KServe's default port.

Serving flags whose default comes from the environment (so a ServingRuntime can set them without args):
  --max_request_bytes         MLWF_SERVE_MAX_REQUEST_BYTES   (8 MiB; larger bodies get 413)
  --request_log_root          MLWF_REQUEST_LOG_ROOT          (<MLWF_STATE_DIR>/request_logs; "off" disables)
  --request_log_sample_rate   MLWF_REQUEST_LOG_SAMPLE_RATE   (1.0 = every row)
  --entity_lookup             MLWF_SERVE_ENTITY_LOOKUP       (lazy | eager | off)

`--workers N` (KServe's flag) serves REST from N processes on one port (serving/workers.py); their metrics
are summed through PROMETHEUS_MULTIPROC_DIR (a fresh temporary directory unless set) and each writes its own
request-log files. One process keeps its metrics in memory and ignores an inherited PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket

    from serving.model import BundleModel
    from serving.server import BundleModelServer


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def build_parser() -> argparse.ArgumentParser:
    from kserve import model_server

    parser = argparse.ArgumentParser(
        parents=[model_server.parser], description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_dir", required=True, help="bundle directory or s3:// prefix (/mnt/models in a pod)")
    parser.add_argument("--bind_host", default=None, help="listen on this address only (local runs: 127.0.0.1)")
    parser.add_argument("--model_version", default=None, help="version label (default: from the bundle's lineage)")
    parser.add_argument("--max_request_bytes", type=int, default=None, help="largest request body accepted")
    parser.add_argument("--request_log_root", default=None, help="request log directory or s3:// prefix, or 'off'")
    parser.add_argument("--request_log_sample_rate", type=float, default=None, help="share of rows logged, 0..1")
    parser.add_argument("--request_log_flush_s", type=float, default=2.0, help="flush request logs this often")
    parser.add_argument(
        "--entity_lookup",
        choices=["lazy", "eager", "off"],
        default=None,
        help="entity-key requests: open the online store on first use, at load, or never",
    )
    parser.add_argument(
        "--scoring",
        choices=["traced", "exported"],
        default="traced",
        help="run the program traced with TorchScript (checked against the export) or as exported",
    )
    parser.add_argument(
        "--torch_threads", type=int, default=1, help="intra-op threads for scoring (1 suits small models; scale with replicas)"
    )
    parser.add_argument("--log_requests", action="store_true", help="also log every successful request (JSON)")
    parser.add_argument("--log_level", default=None, help="log level (MLWF_LOG_LEVEL, default INFO)")
    # None means "not given": a pod serves gRPC on KServe's default port, a local run serves no gRPC.
    parser.set_defaults(grpc_port=None)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Before anything imports prometheus_client: it picks its multiprocess mode when first imported.
    from serving.observability import prepare_multiprocess_metrics

    created = prepare_multiprocess_metrics(_workers(argv))
    try:
        _serve(argv)
    finally:
        if created is not None:
            import shutil

            shutil.rmtree(created, ignore_errors=True)


def _workers(argv: list[str]) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--workers", type=int, default=1)
    return pre.parse_known_args(argv)[0].workers


def _serve(argv: list[str]) -> None:
    args, unknown = build_parser().parse_known_args(argv)
    configure(args)
    if unknown:
        logging.getLogger("mlwf.serving").warning("ignoring unknown arguments", extra={"arguments": unknown})
    model = load_model(args, args.model_dir)
    server = make_server(args, args.workers)
    if args.workers > 1:
        import functools

        # Workers load the bundle the parent fetched and verified (an s3:// bundle is downloaded once).
        assert model.bundle is not None
        server.worker_target = functools.partial(run_worker, argv, str(model.bundle.directory))
    try:
        server.start([model])
    finally:
        model.stop()  # drains and flushes the request log


def run_worker(argv: list[str], model_dir: str, sockets: list[socket.socket]) -> None:
    """One worker process (serving/workers.py): the server of `python -m serving argv`, REST only, on the
    parent's socket, with the bundle the parent fetched and verified."""
    from serving.workers import LOAD_FAILED

    args, _ = build_parser().parse_known_args(argv)
    configure(args)
    model = load_model(args, model_dir, exit_code=LOAD_FAILED)
    try:
        server = make_server(args, workers=1)
        server._register_and_check_atleast_one_model_is_ready([model])
        server.rest_server(model).run(sockets=sockets)  # uvicorn: returns after a graceful SIGTERM
    finally:
        model.stop()  # drains and flushes this worker's request log


def configure(args: argparse.Namespace) -> None:
    from serving.observability import configure_json_logging

    configure_json_logging((args.log_level or _env("MLWF_LOG_LEVEL", "INFO")).upper())


def load_model(args: argparse.Namespace, model_dir: str, exit_code: int = 1) -> BundleModel:
    """The loaded, verified model, with this process set up to serve it; exits `exit_code` if it cannot load."""
    from components.core import bundle as bundle_lib
    from components.core.threads import apply_torch_threads, cpu_budget
    from serving.model import BundleModel, ServingOptions

    # Never more threads than this process's share of the pod's CPUs (cgroup quota and affinity, split over the
    # workers): more would spin against each other (shared/FACTS.md, "CPU threads"). OpenMP waits passively.
    share = max(1, cpu_budget() // max(getattr(args, "workers", 1) or 1, 1))
    apply_torch_threads(min(max(args.torch_threads, 1), share))
    # The request-log thread serialises rows in bursts; a 1 ms switch interval (default 5 ms) bounds how long
    # the event loop can wait for the GIL behind it.
    sys.setswitchinterval(0.001)
    options = ServingOptions(
        request_log_root=_request_log_root(args.request_log_root),
        request_log_sample_rate=args.request_log_sample_rate
        if args.request_log_sample_rate is not None
        else float(_env("MLWF_REQUEST_LOG_SAMPLE_RATE", "1.0")),
        request_log_flush_s=args.request_log_flush_s,
        entity_lookup=args.entity_lookup or _env("MLWF_SERVE_ENTITY_LOOKUP", "lazy"),
        trace=args.scoring == "traced",
        version=args.model_version,
    )
    model = BundleModel(args.model_name, model_dir, options)
    try:
        model.load()
    except (bundle_lib.BundleError, OSError, ValueError) as err:
        logging.getLogger("mlwf.serving").error("cannot load the model bundle", extra={"model_dir": model_dir, "error": str(err)})
        sys.exit(exit_code)
    # Everything loaded so far (torch, kserve, the program) lives for the whole process: freeze it out of the
    # garbage collector, and collect young objects less often. Full collections over those millions of objects
    # were the 100+ ms latency spikes seen under load (p99 144 ms -> 6 ms at 2 connections with wrk).
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    return model


def make_server(args: argparse.Namespace, workers: int) -> BundleModelServer:
    from kserve.constants.constants import DEFAULT_GRPC_PORT

    from serving.front import DEFAULT_MAX_BODY_BYTES
    from serving.server import BundleModelServer

    max_body = args.max_request_bytes or int(_env("MLWF_SERVE_MAX_REQUEST_BYTES", str(DEFAULT_MAX_BODY_BYTES)))
    local = args.bind_host is not None
    return BundleModelServer(
        host=args.bind_host or "0.0.0.0",
        grpc_host=args.bind_host or "::",
        max_body_bytes=max_body,
        log_requests=args.log_requests,
        grpc_options={
            "grpc_max_send_message_length": args.grpc_max_send_message_length,
            "grpc_max_receive_message_length": min(args.grpc_max_receive_message_length, max_body),
        },
        http_port=args.http_port,
        grpc_port=args.grpc_port or DEFAULT_GRPC_PORT,
        workers=workers,
        max_threads=args.max_threads,
        max_asyncio_workers=args.max_asyncio_workers,
        enable_grpc=args.enable_grpc and (args.grpc_port is not None or not local),
        enable_docs_url=False,
        enable_latency_logging=args.enable_latency_logging,
        event_loop=args.event_loop,
        timeout_keep_alive=args.timeout_keep_alive,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )


def _request_log_root(flag: str | None) -> str | None:
    value = flag or _env("MLWF_REQUEST_LOG_ROOT", "")
    if value.lower() == "off":
        return None
    if value:
        return value
    from components.core import storage
    from components.core.settings import get_settings

    return storage.join(get_settings().state_dir, "request_logs")
