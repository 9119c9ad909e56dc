"""Quiet output for every entry point (`python -m pipelines`, `make demo`, `make serve`, the image).

Library chatter is filtered where it starts, and only what is known to be harmless:

* TensorFlow's C++ logging (oneDNN and CPU-feature notices, the cuFFT/cuDNN/cuBLAS "Unable to register
  factory" lines of a CUDA build on a machine without a GPU, XLA's start-up lines) by its own log level,
  ``TF_CPP_MIN_LOG_LEVEL=3``, set before TensorFlow loads and inherited by Beam's worker processes;
* Python warnings by message (``HARMLESS_WARNINGS``), also for child processes (``PYTHONWARNINGS``);
* Python log records (absl, TFX, Beam, TFMA) by message (``HARMLESS_LOG_MESSAGES``), with absl at
  WARNING. Every other warning and error still shows.

``--verbose`` (``verbose=True``) changes nothing: every line is back. This module imports nothing
heavy; call ``quiet_process`` before TensorFlow is imported. It lives in ``serving/`` (a leaf
runtime package, importable by ``pipelines/`` too).
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Iterable, List, Pattern, Tuple

# (category name, message start) of Python warnings that say nothing about a run.
HARMLESS_WARNINGS: Tuple[Tuple[str, str], ...] = (
    # google.api_core and the Google Cloud clients Beam imports, once per package, at every start.
    ("FutureWarning", "You are using a non-supported Python version"),
    ("FutureWarning", "You are using a Python version"),
    ("FutureWarning", "Support for google-cloud-storage < 3.0.0 will be removed"),
    # TFX/TFMA/tfx-bsl internals on our pinned stack.
    ("DeprecationWarning", ""),
    ("PendingDeprecationWarning", ""),
    ("UserWarning", "Hint: Pipeline.enable_cache"),
    ("UserWarning", "Skipping checking PTransform"),
)

# Log messages (regular expressions, searched in the formatted message) known to be harmless.
HARMLESS_LOG_MESSAGES: Tuple[str, ...] = (
    r"ArtifactQuery\.property_predicate is not supported",
    r"Examples artifact does not have payload_format custom property",
    r"Tables initialized inside a tf\.function",
    r"Make sure that locally built Python SDK docker image",
    r"is not installed\. Some of the TFMA",  # optional TFMA extras
    r"Tensorflow version \(.*\) found\. Note that TFMA",
    r"Found untraced functions such as",
    r"Function `_wrapped_model` contains input name\(s\)",
    r"Skipping full serialization of Keras layer",
    r"Compiled the loaded model, but the compiled metrics",
    r"No training configuration found in save file",
    r"Importing a function .* with ops with unsaved custom gradients",
    r"Value in checkpoint could not be found in the restored object",
    r"Detecting that an object or model or tf\.train\.Checkpoint is being deleted",
    r"please use \`tf\.keras\.optimizers\.legacy\.",
    r"At this time, the v2\.11\+ optimizer",
    r"You are using a non-supported Python version",
    r"Could not find TensorRT",
    r"Unable to register cu(FFT|DNN|BLAS) factory",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"oneDNN custom operations are on",
    r"Could not find cuda drivers on your machine",
    r"The `input_signature` of a `tf\.function` is ignored",
    r"Using a legacy .* RunInference",
    r"Default value of `tfxio_use_byte_size_batching`",
    r"Transform version .* differs from the version used",
    r"Features .* are not in the schema",
    r"Unable to find metric keys to compute",
    r"Evaluator: .* was not found in the signatures",
    r"Using the local in-process metadata store",
    r"Caching is not supported",
    r"Couldn't find python-snappy",
    r"Callback method `on_train_batch_end` is slow compared to the batch time",
    r"AutoGraph could not transform <function",  # the function then runs as it is
    r"is deprecated and will be removed in a future version",
    r"Support for google-cloud-storage < 3\.0\.0 will be removed",
    # TFT skips its analysis-free shortcut; every run analyzes (vocabularies), so it always says so.
    r"Not using the in-place Transform because the following features require analyzing",
)

_harmless_logs: Pattern = re.compile("|".join(f"(?:{p})" for p in HARMLESS_LOG_MESSAGES))


def is_harmless(message: str) -> bool:
    """Whether a log message or warning text is one of the known-harmless ones."""
    return bool(_harmless_logs.search(message))


class HarmlessFilter(logging.Filter):
    """Drops known-harmless records (by message) and, below ``min_level``, everything else too."""

    def __init__(self, min_level: int = logging.WARNING):
        super().__init__()
        self.min_level = min_level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level:
            return False
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 -- a malformed record is shown as it is
            return True
        return not is_harmless(message)


def _pythonwarnings(entries: Iterable[Tuple[str, str]]) -> List[str]:
    # PYTHONWARNINGS: action:message:category:module:lineno; the message is a literal start, and
    # ':' or ',' inside it would break the syntax.
    return [f"ignore:{msg}:{category}" for category, msg in entries if ":" not in msg and "," not in msg]


def quiet_process(verbose: bool = False, environ=os.environ) -> None:
    """Before TensorFlow is imported: C++ log level, Python warnings by message (here and in children).

    A value the user set (``TF_CPP_MIN_LOG_LEVEL``) wins. ``verbose``: nothing is changed.
    """
    if verbose:
        return
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # gRPC's C core (the serving clients, Beam's worker connections): errors only.
    environ.setdefault("GRPC_VERBOSITY", "ERROR")
    entries = _pythonwarnings(HARMLESS_WARNINGS)
    current = [e for e in environ.get("PYTHONWARNINGS", "").split(",") if e]
    environ["PYTHONWARNINGS"] = ",".join(current + [e for e in entries if e not in current])
    for category, message in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=_category(category))


def _category(name: str):
    import builtins
    return getattr(builtins, name, Warning)


def quiet_logs(verbose: bool = False, min_level: int = logging.WARNING,
               root: logging.Logger = None) -> HarmlessFilter:
    """Python logging: known-harmless records dropped, and records below ``min_level`` (all back with verbose).

    The filter sits on the root logger's handlers (absl's among them, once absl is imported), so it
    sees every library's records, which propagate there. absl's own verbosity is left to the caller.
    Returns the filter (for tests and the CLI).
    """
    root = root or logging.getLogger()
    flt = HarmlessFilter(logging.NOTSET if verbose else min_level)
    if verbose:
        return flt
    if not root.handlers:
        # What logging.basicConfig would add (libraries call it later; it then does nothing).
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
        root.addHandler(handler)
    install_filter(flt, root)
    return flt


def install_filter(flt: logging.Filter, root: logging.Logger = None) -> None:
    """Puts ``flt`` on every handler of the root logger and on absl's (idempotent; call again after a
    library may have added a handler)."""
    root = root or logging.getLogger()
    handlers = list(root.handlers)
    try:
        from absl import logging as absl_logging
        handlers.append(absl_logging.get_absl_handler())
    except ImportError:
        pass
    for handler in handlers:
        if flt not in handler.filters:
            handler.addFilter(flt)


def filter_lines(lines: Iterable[str]) -> List[str]:
    """Lines of captured output that are not known-harmless (for tests of other programs' output)."""
    return [line for line in lines if not is_harmless(line)]
