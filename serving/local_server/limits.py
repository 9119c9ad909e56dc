"""Admission: what the requests in progress may hold, REST and gRPC together."""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator

from serving.local_server.defaults import DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_IN_FLIGHT_BYTES, DEFAULT_QUEUE_TIMEOUT_S
from serving.local_server.errors import ServerBusyError


class Budget:
    """A capacity that concurrent requests take from and give back (bytes of body, running predictions).

    A request that finds no room waits at most ``wait_s`` and then gets ServerBusyError: an overload
    turns into quick 503s the clients back off from, instead of unbounded memory or threads.
    """

    def __init__(self, what: str, capacity: int, wait_s: float):
        if capacity < 1:
            raise ValueError(f"{what}: capacity must be >= 1, got {capacity}")
        self.what = what
        self.capacity = capacity
        self.wait_s = wait_s
        self._used = 0
        self._changed = threading.Condition()

    @property
    def used(self) -> int:
        with self._changed:
            return self._used

    @contextlib.contextmanager
    def hold(self, amount: int) -> Iterator[None]:
        amount = min(amount, self.capacity)  # one request alone always fits (its own limit is checked apart)
        deadline = time.monotonic() + self.wait_s
        with self._changed:
            while self._used + amount > self.capacity:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServerBusyError(f"server busy: {self.what} in use {self._used} of {self.capacity}; "
                                          "retry later")
                self._changed.wait(left)
            self._used += amount
        try:
            yield
        finally:
            with self._changed:
                self._used -= amount
                self._changed.notify_all()


class RequestLimits:
    """The two budgets shared by REST and gRPC: request bytes held (memory) and predictions running.

    A body's bytes are taken before it is read and the prediction slot only once it is in, so clients
    that trickle their bodies hold memory they declared, never the slots that others' predictions need.
    """

    def __init__(self, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 max_in_flight_bytes: int = DEFAULT_MAX_IN_FLIGHT_BYTES,
                 queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S):
        self.body_bytes = Budget("request bytes", max_in_flight_bytes, queue_timeout_s)
        self.predictions = Budget("predictions", max_in_flight, queue_timeout_s)
