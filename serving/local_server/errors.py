"""What can go wrong in a request, and what each API answers: the one error -> status table.

Both the REST handler and the gRPC servicers map an exception to their answer through
``ERROR_STATUS`` (``error_status`` / ``answer_error``), so an HTTP code and its gRPC status never
disagree.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import Tuple

import grpc

from serving.model_versions import is_version_name
from serving.signatures import InvalidRequestError

# One logger for the whole server (operators and tests filter on its name).
log = logging.getLogger("serving.local_server")

_MAX_MESSAGE_CHARS = 500  # an error message may quote the client's input: keep answers and logs short


class ModelNotFoundError(LookupError):
    """Unknown model name or version (HTTP 404 / NOT_FOUND)."""


class ModelNotReadyError(RuntimeError):
    """The model is known but no version is loaded yet (HTTP 503 / UNAVAILABLE: retry later)."""


class EndpointNotFoundError(LookupError):
    """A REST path that is not part of the API."""


class MethodNotAllowedError(ValueError):
    """A REST method the path does not take (e.g. DELETE on a model)."""


class LengthRequiredError(InvalidRequestError):
    """A predict request without a usable Content-Length (the body could not be delimited)."""


class RequestTooLargeError(InvalidRequestError):
    """A body over --max-body-bytes, refused from its Content-Length before it is read."""


class RequestTimeoutError(RuntimeError):
    """The client stopped sending its body for longer than the socket timeout."""


class ServerBusyError(RuntimeError):
    """No room for the request within --queue-timeout-s: retry later (HTTP 503 / RESOURCE_EXHAUSTED)."""


@dataclasses.dataclass(frozen=True)
class ErrorStatus:
    http: int
    grpc: grpc.StatusCode

    @property
    def name(self) -> str:
        """The canonical status name, as the metrics and the clients report it."""
        return self.grpc.name


# The one mapping from an error to the answer of both APIs (first match wins, so subclasses come
# first). HTTP codes as TF Serving's REST server maps its statuses, plus 411/413 for the body limits.
ERROR_STATUS: Tuple[Tuple[type, ErrorStatus], ...] = (
    (RequestTooLargeError, ErrorStatus(413, grpc.StatusCode.INVALID_ARGUMENT)),
    (LengthRequiredError, ErrorStatus(411, grpc.StatusCode.INVALID_ARGUMENT)),
    (InvalidRequestError, ErrorStatus(400, grpc.StatusCode.INVALID_ARGUMENT)),
    (MethodNotAllowedError, ErrorStatus(405, grpc.StatusCode.UNIMPLEMENTED)),
    (EndpointNotFoundError, ErrorStatus(404, grpc.StatusCode.NOT_FOUND)),
    (ModelNotFoundError, ErrorStatus(404, grpc.StatusCode.NOT_FOUND)),
    (ModelNotReadyError, ErrorStatus(503, grpc.StatusCode.UNAVAILABLE)),
    (ServerBusyError, ErrorStatus(503, grpc.StatusCode.RESOURCE_EXHAUSTED)),
    (RequestTimeoutError, ErrorStatus(408, grpc.StatusCode.DEADLINE_EXCEEDED)),
)
INTERNAL = ErrorStatus(500, grpc.StatusCode.INTERNAL)


def error_status(error: BaseException) -> ErrorStatus:
    """The answer to a request that raised ``error``; anything unexpected is INTERNAL (a server bug)."""
    for kind, status in ERROR_STATUS:
        if isinstance(error, kind):
            return status
    return INTERNAL


def one_line(error: BaseException) -> str:
    text = str(error)
    line = text.splitlines()[0] if text.strip() else type(error).__name__
    return line if len(line) <= _MAX_MESSAGE_CHARS else line[:_MAX_MESSAGE_CHARS] + "..."


def answer_error(api: str, what: str, error: BaseException) -> Tuple[ErrorStatus, str]:
    """The status and one-line message for a request that raised ``error``, logged: one line for the
    client's mistakes, a traceback only for a server bug."""
    status = error_status(error)
    if status is INTERNAL:
        log.error("%s %s: internal error", api, what, exc_info=error)
        return status, f"internal error: {type(error).__name__}: {one_line(error)}"
    log.info("%s %s: %s %s", api, what, status.name, one_line(error))
    return status, one_line(error)


def parse_version(text: str) -> int:
    """A model version from a request path: TF Serving's versions are int64."""
    if not is_version_name(text):
        raise InvalidRequestError(f"version {text[:30]}{'...' if len(text) > 30 else ''} is not a valid "
                                  "version number (a non-negative int64)")
    return int(text)


_TF_ERROR_NOISE = re.compile(r"^(Graph execution error:|Detected at node|<stack traces unavailable>|\s|\[\[)")
_TF_FUNCTION_PREFIX = re.compile(r"^(\{\{function_node [^}]*\}\}\s*)+")
_TF_QUOTED_VALUE = re.compile(r"(input), value: '.*'(?=\s*\[\[|\s*$)", re.DOTALL)


def tf_error_line(message: str) -> str:
    """The line of a TF runtime error that says what was wrong with the input, not where in the graph.

    A quoted input value is dropped: it is the client's own bytes (a serialized tf.Example holds
    newlines and binary, and may be megabytes).
    """
    message = _TF_QUOTED_VALUE.sub(r"\1", message)
    lines = [line for line in message.splitlines() if line.strip()]
    for line in lines:
        if not _TF_ERROR_NOISE.match(line):
            return _TF_FUNCTION_PREFIX.sub("", line).split("\t [[")[0].split(" [[")[0].strip()
    return lines[0] if lines else "no message"
