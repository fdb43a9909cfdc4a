"""Entry point: `python -m serving --model_name NAME --model_dir DIR_OR_S3 [KServe flags] [--bind_host 127.0.0.1]`.

In a pod KServe's ModelServer binds 0.0.0.0 as usual. On a laptop `--bind_host 127.0.0.1` serves the
same application on loopback only (ModelServer has no host flag), REST only.
"""

from __future__ import annotations

import argparse
import logging


def build_parser() -> argparse.ArgumentParser:
    from kserve import model_server

    parser = argparse.ArgumentParser(parents=[model_server.parser], description=__doc__)
    parser.add_argument("--model_dir", required=True, help="bundle directory or s3:// prefix (/mnt/models in a pod)")
    parser.add_argument("--bind_host", default=None, help="serve REST on this address only (local runs)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args, _ = build_parser().parse_known_args(argv)
    from kserve import ModelServer

    from serving.model import BundleModel

    model = BundleModel(args.model_name, args.model_dir)
    model.load()
    if args.bind_host is None:
        ModelServer().start([model])
        return
    from kserve.model_server import FASTAPI_APP_IMPORT_STRING
    from kserve.protocol.rest.server import RESTServer

    server = ModelServer(http_port=args.http_port, enable_grpc=False)
    server.register_model(model)
    rest = RESTServer(FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, args.http_port)
    rest.config.host = args.bind_host
    logging.getLogger(__name__).info("serving %s on http://%s:%d", args.model_name, args.bind_host, args.http_port)
    rest.run()


if __name__ == "__main__":
    main()
