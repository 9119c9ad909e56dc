"""``python -m serving.local_server``: serve one model's versions until SIGTERM or Ctrl-C.

Plain arguments only: the serving runtime reads no pipeline config. ``python -m pipelines serve``
(``make serve``) adds the same options to its own parser (``add_arguments``) with --base and
--model-name taken from pipelines/config.py, and runs ``serve``.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import List, Optional

from serving.local_server.defaults import (DEFAULT_GRPC_PORT, DEFAULT_HOST, DEFAULT_MAX_BATCH_SIZE,
                                           DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MODEL_NAME,
                                           DEFAULT_NUM_VERSIONS, DEFAULT_POLL_SECONDS, DEFAULT_QUEUE_TIMEOUT_S,
                                           DEFAULT_REST_PORT, DEFAULT_RETRY_FAILED_SECONDS, DEFAULT_SOCKET_TIMEOUT_S)
from serving.quiet import quiet_logs

DESCRIPTION = ("A local stand-in for TF Serving: the model's versions under a serving base directory, "
               "served with the real TF runtime over TF Serving's REST and gRPC APIs.")


def add_arguments(parser: argparse.ArgumentParser, base_required: bool = True,
                  base_help: str = "serving base directory: versions are <base>/<model-name>/<version>/",
                  model_name_default: Optional[str] = DEFAULT_MODEL_NAME) -> None:
    """The server's options on `parser`; a caller that fills --base (and --model-name) itself passes
    ``base_required=False`` (and ``model_name_default=None``)."""
    parser.add_argument("--base", required=base_required, default=None, help=base_help)
    parser.add_argument("--model-name", default=model_name_default)
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (0.0.0.0 to serve other machines)")
    parser.add_argument("--rest-port", type=int, default=DEFAULT_REST_PORT)
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT)
    parser.add_argument("--num-versions", type=int, default=DEFAULT_NUM_VERSIONS, help="serve the newest N versions")
    parser.add_argument("--poll-seconds", type=float, default=DEFAULT_POLL_SECONDS,
                        help="how often to look for new versions")
    parser.add_argument("--retry-failed-seconds", type=float, default=DEFAULT_RETRY_FAILED_SECONDS,
                        help="how often to retry a version that failed to load")
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE)
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help="largest REST body / gRPC message; a larger one gets 413 unread")
    parser.add_argument("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT,
                        help="predictions running at once, REST and gRPC together")
    parser.add_argument("--max-in-flight-bytes", type=int, default=None,
                        help="request bytes held at once (default: 4 x --max-body-bytes)")
    parser.add_argument("--queue-timeout-s", type=float, default=DEFAULT_QUEUE_TIMEOUT_S,
                        help="how long a request waits for room before a 503 / RESOURCE_EXHAUSTED")
    parser.add_argument("--socket-timeout-s", type=float, default=DEFAULT_SOCKET_TIMEOUT_S,
                        help="close a REST connection silent this long")
    parser.add_argument("--verbose", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving.local_server", description=DESCRIPTION)
    add_arguments(parser)
    return parser


def serve(args: argparse.Namespace) -> int:
    """Run the server of parsed `args` (``add_arguments``' options, --base set) until stopped."""
    from serving.local_server.server import LocalServer

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    quiet_logs(args.verbose, min_level=logging.NOTSET)  # our INFO lines stay; known-harmless ones go
    base = args.base
    if min(args.num_versions, args.max_batch_size, args.max_body_bytes, args.max_in_flight,
           args.max_in_flight_bytes or 1) < 1 or min(args.poll_seconds, args.socket_timeout_s) <= 0 \
            or min(args.retry_failed_seconds, args.queue_timeout_s) < 0:
        print("error: --num-versions, --max-batch-size, --max-body-bytes, --max-in-flight[-bytes] must be >= 1, "
              "--poll-seconds and --socket-timeout-s > 0, --retry-failed-seconds and --queue-timeout-s >= 0",
              file=sys.stderr)
        return 2
    try:
        server = LocalServer(base, args.model_name, args.host, args.rest_port, args.grpc_port, args.num_versions,
                             args.poll_seconds, args.max_batch_size, args.max_body_bytes,
                             max_in_flight=args.max_in_flight, max_in_flight_bytes=args.max_in_flight_bytes,
                             queue_timeout_s=args.queue_timeout_s, socket_timeout_s=args.socket_timeout_s,
                             retry_failed_seconds=args.retry_failed_seconds)
    except OSError as e:
        print(f"error: cannot listen on {args.host} ports {args.rest_port}/{args.grpc_port}: {e}", file=sys.stderr)
        return 2
    server.start()
    versions = server.repository.poll_once()
    print(f"serving model {args.model_name!r} from {os.path.join(base, args.model_name)}: "
          f"REST {server.rest_url}/v1/models/{args.model_name}, gRPC {server.grpc_target}; "
          + (f"version {versions[-1]} loaded" if versions else
             "no version yet, waiting for one (run `make demo` to push a model)"), flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    server.stop()
    return 0



def main(argv: Optional[List[str]] = None) -> int:
    return serve(build_parser().parse_args(argv))
