"""The serving process's core: REST and gRPC on one ModelRepository, started and stopped together."""
from __future__ import annotations

import threading
from typing import Optional

from serving.local_server.grpc_api import make_grpc_server
from serving.local_server.defaults import (DEFAULT_GRPC_PORT, DEFAULT_HOST, DEFAULT_MAX_BATCH_SIZE,
                                           DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MODEL_NAME,
                                           DEFAULT_NUM_VERSIONS, DEFAULT_POLL_SECONDS, DEFAULT_QUEUE_TIMEOUT_S,
                                           DEFAULT_REST_PORT, DEFAULT_RETRY_FAILED_SECONDS, DEFAULT_SOCKET_TIMEOUT_S)
from serving.local_server.limits import RequestLimits
from serving.local_server.metrics import Metrics
from serving.local_server.repository import ModelRepository
from serving.local_server.rest import make_rest_server


class LocalServer:
    """REST + gRPC on one ModelRepository; ``start()`` returns once both ports are bound."""

    def __init__(self, base_dir: str, model_name: str = DEFAULT_MODEL_NAME, host: str = DEFAULT_HOST,
                 rest_port: int = DEFAULT_REST_PORT, grpc_port: int = DEFAULT_GRPC_PORT,
                 num_versions: int = DEFAULT_NUM_VERSIONS, poll_seconds: float = DEFAULT_POLL_SECONDS,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, *,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, max_in_flight_bytes: Optional[int] = None,
                 queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S, socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S,
                 retry_failed_seconds: float = DEFAULT_RETRY_FAILED_SECONDS):
        self.repository = ModelRepository(base_dir, model_name, num_versions, poll_seconds, retry_failed_seconds)
        self.metrics = Metrics([model_name])
        # At least one body at the size limit must fit, or such a request could never run.
        self.limits = RequestLimits(max_in_flight, max(max_in_flight_bytes or 4 * max_body_bytes, max_body_bytes),
                                    queue_timeout_s)
        self.host = host
        self._rest = make_rest_server(self.repository, host, rest_port, self.metrics, self.limits, max_batch_size,
                                      max_body_bytes, socket_timeout_s)
        self._grpc, self.grpc_port = make_grpc_server(self.repository, host, grpc_port, self.metrics, self.limits,
                                                      max_batch_size, max_body_bytes)
        self.rest_port = self._rest.server_address[1]
        self._rest_thread: Optional[threading.Thread] = None

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def start(self) -> "LocalServer":
        self.repository.poll_once()
        self.repository.start()
        self._grpc.start()
        self._rest_thread = threading.Thread(target=self._rest.serve_forever, kwargs={"poll_interval": 0.2},
                                             name="rest", daemon=True)
        self._rest_thread.start()
        return self

    def stop(self) -> None:
        self._rest.shutdown()
        self._rest.server_close()
        self._grpc.stop(grace=1).wait(5)
        self.repository.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
