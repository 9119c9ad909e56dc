"""Bounded retries with exponential backoff, shared by the REST and gRPC clients."""
from __future__ import annotations

import dataclasses
import random
import time
from typing import Callable, Optional, TypeVar

T = TypeVar("T")


class ServingError(RuntimeError):
    """The model server answered with an error (or could not be reached after the retries).

    ``code`` is TF Serving's canonical status name: INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE,
    DEADLINE_EXCEEDED, INTERNAL, ...
    """

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RetryableError(ServingError):
    """A transient failure (UNAVAILABLE, HTTP 503, connection refused): worth another attempt."""


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    # Fraction of each delay drawn at random, so that clients restarted together do not retry in step.
    jitter: float = 0.2

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s or self.multiplier < 1:
            raise ValueError("need 0 <= initial_backoff_s <= max_backoff_s and multiplier >= 1")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        return base * (1.0 - self.jitter * random.random())


NO_RETRY = RetryPolicy(max_attempts=1)


def call_with_retries(attempt: Callable[[], T], policy: RetryPolicy,
                      sleep: Callable[[float], None] = time.sleep,
                      on_retry: Optional[Callable[[int, RetryableError], None]] = None) -> T:
    """Run ``attempt`` until it returns or raises something other than RetryableError, at most
    ``policy.max_attempts`` times; the last RetryableError propagates."""
    for number in range(1, policy.max_attempts + 1):
        try:
            return attempt()
        except RetryableError as e:
            if number == policy.max_attempts:
                raise
            if on_retry:
                on_retry(number, e)
            sleep(policy.delay(number))
    raise AssertionError("unreachable")
