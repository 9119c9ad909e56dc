"""The model's versions under ``<base>/<model_name>/``: loaded with the TF runtime, polled for new ones."""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from serving import model_versions
from serving.local_server.defaults import DEFAULT_NUM_VERSIONS, DEFAULT_POLL_SECONDS, DEFAULT_RETRY_FAILED_SECONDS
from serving.local_server.errors import (InvalidRequestError, ModelNotFoundError, ModelNotReadyError, one_line,
                                         tf_error_line)
from serving.model_versions import SAVED_MODEL_PB
from serving.signatures import SignatureSpec, signatures_from_proto

# One logger for the whole server (operators and tests filter on its name).
log = logging.getLogger("serving.local_server")

_EMPTY_VALUE = {"DT_STRING": b"", "DT_BOOL": False, "DT_FLOAT": 0.0, "DT_DOUBLE": 0.0, "DT_HALF": 0.0}


class ServedVersion:
    """One loaded version: the TF object, its callable signatures and their SignatureDefs."""

    def __init__(self, version: int, path: str):
        self.version = version
        self.path = path
        # The SignatureDefs as TF Serving reports them come from saved_model.pb itself.
        saved_model = saved_model_pb2.SavedModel()
        with open(os.path.join(path, SAVED_MODEL_PB), "rb") as f:
            saved_model.ParseFromString(f.read())
        self.signature_defs = saved_model.meta_graphs[0].signature_def
        self.signatures: Dict[str, SignatureSpec] = signatures_from_proto(self.signature_defs)
        self.loaded = tf.saved_model.load(path)
        self.functions = {name: self.loaded.signatures[name] for name in self.signatures}
        self._warm_up()

    def _warm_up(self) -> None:
        """Call each signature once on a one-row batch of empty values before the version serves.

        TF instantiates a function on its first call, and concurrent first calls each do it: a burst
        of 200 predicts on a fresh version took ~30 s on 2 cores instead of under 1 s (TF Serving's
        answer is its warmup requests). A signature that rejects empty values is left cold.
        """
        for signature in self.signatures.values():
            if not all(spec.shape is None or len(spec.shape) == 1 for spec in signature.inputs.values()):
                continue
            columns = {name: [_EMPTY_VALUE.get(spec.dtype, 0)] for name, spec in signature.inputs.items()}
            try:
                self.run(signature, columns)
            except Exception as e:  # noqa: BLE001 -- only a warm-up: the first request pays instead
                log.debug("no warm-up call of signature %r: %s", signature.name, one_line(e))

    def run(self, signature: SignatureSpec, columns: Mapping[str, list]) -> Dict[str, np.ndarray]:
        tensors = {name: tf.constant(values, dtype=tf.dtypes.as_dtype(signature.inputs[name].dtype_enum))
                   for name, values in columns.items()}
        try:
            outputs = self.functions[signature.name](**tensors)
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as e:
            # e.g. a serialized tf.Example that does not parse: the request's fault, not the server's.
            raise InvalidRequestError(f"the model rejected the input: {tf_error_line(e.message)}") from None
        except UnicodeDecodeError as e:
            # TF's error message quoted the client's bytes (a tf.Example that is not one) and TF could
            # not decode its own message: still the request's fault.
            message = e.object.decode("utf-8", "replace") if isinstance(e.object, bytes) else str(e.object)
            raise InvalidRequestError(f"the model rejected the input: {tf_error_line(message)}") from None
        return {name: value.numpy() for name, value in outputs.items()}


@dataclasses.dataclass
class _LoadFailure:
    mtime: float  # of saved_model.pb when the load failed
    failed_at: float  # time.monotonic()
    message: str


class ModelRepository:
    """Versions of one model under ``<base>/<name>/``: loads new ones, keeps the newest ``num_versions``."""

    def __init__(self, base_dir: str, model_name: str, num_versions: int = DEFAULT_NUM_VERSIONS,
                 poll_seconds: float = DEFAULT_POLL_SECONDS,
                 retry_failed_seconds: float = DEFAULT_RETRY_FAILED_SECONDS):
        self.base_dir = base_dir
        self.model_name = model_name
        self.model_dir = os.path.join(base_dir, model_name)
        self.num_versions = num_versions
        self.poll_seconds = poll_seconds
        self.retry_failed_seconds = retry_failed_seconds
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._versions: Dict[int, ServedVersion] = {}
        self._failed: Dict[int, _LoadFailure] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- versions on disk ---------------------------------------------------------------------
    def _candidates(self) -> List[int]:
        """The complete versions (serving.model_versions: saved_model.pb there) whose variables/ is there
        too: a copy made by another tool than the Pusher may write saved_model.pb first."""
        return [v for v in model_versions.versions(self.model_dir)
                if os.path.isdir(os.path.join(self.model_dir, str(v), "variables"))]

    def _should_try(self, version: int, mtime: float) -> bool:
        """Not after a failure, until saved_model.pb changes or --retry-failed-seconds pass: a copy that
        was still under way (variables after the pb) completes without touching the pb."""
        failure = self._failed.get(version)
        return (failure is None or failure.mtime != mtime
                or time.monotonic() - failure.failed_at >= self.retry_failed_seconds)

    def poll_once(self) -> List[int]:
        """Load the newest versions that are not loaded yet, unload older ones; returns the loaded versions.

        Like TF Serving's availability-preserving policy, an old version is unloaded only once a newer
        one is serving: a version that fails to load leaves the previous one in place.
        """
        with self._poll_lock:  # the poll thread and explicit callers never load the same version twice
            on_disk = self._candidates()
            for version in on_disk[-self.num_versions:]:
                with self._lock:
                    if version in self._versions:
                        continue
                path = os.path.join(self.model_dir, str(version))
                try:
                    mtime = os.path.getmtime(os.path.join(path, SAVED_MODEL_PB))
                except FileNotFoundError:
                    continue  # removed since the scan
                with self._lock:
                    if not self._should_try(version, mtime):
                        continue
                    retry = version in self._failed
                started = time.monotonic()
                try:
                    served = ServedVersion(version, path)
                except Exception as e:  # a broken version must not stop serving the others
                    message = one_line(e)
                    with self._lock:
                        self._failed[version] = _LoadFailure(mtime, time.monotonic(), message)
                    log.error("cannot load %s version %d from %s: %s (retrying every %gs)", self.model_name,
                              version, path, message, self.retry_failed_seconds)
                    continue
                with self._lock:
                    self._failed.pop(version, None)
                    self._versions[version] = served
                log.info("loaded %s version %d in %.1fs%s", self.model_name, version, time.monotonic() - started,
                         " (after a failed attempt)" if retry else "")
            with self._lock:
                # Versions removed from disk go; of the rest, the newest num_versions stay.
                keep = sorted(v for v in self._versions if v in on_disk)[-self.num_versions:]
                for version in sorted(set(self._versions) - set(keep)):
                    del self._versions[version]
                    log.info("unloaded %s version %d", self.model_name, version)
                for version in [v for v in self._failed if v not in on_disk]:
                    del self._failed[version]
                return sorted(self._versions)

    def start(self) -> None:
        def loop():
            while not self._stop.wait(self.poll_seconds):
                try:
                    self.poll_once()
                except Exception:  # keep polling whatever one scan hit (e.g. a folder removed mid-scan)
                    log.exception("version poll failed")
        self._thread = threading.Thread(target=loop, name="version-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    # -- lookups ---------------------------------------------------------------------------------
    def get(self, model_name: str, version: Optional[int] = None) -> ServedVersion:
        if model_name != self.model_name:
            raise ModelNotFoundError(f"model {model_name!r} is not served here (serving {self.model_name!r})")
        with self._lock:
            if version is None:
                if not self._versions:
                    raise ModelNotReadyError(f"no version of model {model_name!r} is loaded yet "
                                             f"(waiting for versions under {self.model_dir})")
                return self._versions[max(self._versions)]
            if version not in self._versions:
                raise ModelNotFoundError(f"version {version} of model {model_name!r} is not loaded "
                                         f"(loaded: {sorted(self._versions) or 'none'})")
            return self._versions[version]

    def status(self, model_name: str, version: Optional[int] = None) -> List[Tuple[int, str, str, str]]:
        """[(version, state, error_code, error_message)] as TF Serving's GetModelStatus reports them."""
        if model_name != self.model_name:
            raise ModelNotFoundError(f"model {model_name!r} is not served here (serving {self.model_name!r})")
        with self._lock:
            rows = [(v, "AVAILABLE", "OK", "") for v in sorted(self._versions)]
            rows += [(v, "END", "UNKNOWN", f.message) for v, f in sorted(self._failed.items())]
        if version is not None:
            rows = [r for r in rows if r[0] == version]
            if not rows:
                raise ModelNotFoundError(f"version {version} of model {model_name!r} is not loaded")
        return rows
