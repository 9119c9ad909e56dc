"""Live progress of a local run: one line per stage start/finish, and while a stage runs, what it did.

Sources, all read from outside the components (no component reports to us):

* LocalDagRunner's "Component X is running/finished" log records: the stage lines;
* Beam's own counters, read while a Beam stage runs (``BeamCounters``): the DirectRunner is asked
  for the running bundle's metrics every ``PROGRESS_SECONDS``, in-memory (the SDK worker of this
  process) and multi-processing (the workers, over the Fn API's progress requests) alike. Shown:
  ExampleGen's rows read/emitted/quarantined (``click_log_example_gen`` counters), the rows every
  TFXIO read has decoded (StatisticsGen, Transform's analyze and transform passes, the Evaluator)
  and TFMA's evaluated examples;
* Keras' own per-epoch lines (``fit(verbose=2)``), routed to logging instead of stdout: epochs,
  steps, examples/s, loss and AUC of the Trainer.

On a terminal the running stage is one refreshing line; in logs and CI (not a TTY) it is a plain
line at most every ``PLAIN_SECONDS`` per stage.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from typing import Callable, Dict, Optional, TextIO

PROGRESS_SECONDS = 2.0  # how often a running bundle's counters are read
PLAIN_SECONDS = float(os.environ.get("SPARSECTR_PROGRESS_SECONDS", "15"))  # plain-line interval (not a TTY)
TTY_REFRESH_SECONDS = 0.5


def _fmt_int(n: float) -> str:
    return f"{int(n):,}"


class Display:
    """Writes progress to ``stream``: permanent lines (``line``) and the running stage's state (``status``).

    TTY: the state is a single line rewritten in place (and cleared before a permanent line).
    Otherwise: the state is printed as a plain line when it changed and ``plain_seconds`` have passed.
    """

    def __init__(self, stream: Optional[TextIO] = None, tty: Optional[bool] = None,
                 plain_seconds: float = PLAIN_SECONDS, clock: Callable[[], float] = time.time,
                 started: Optional[float] = None):
        self.stream = stream or sys.stderr
        if tty is None:
            tty = bool(getattr(self.stream, "isatty", lambda: False)()) and os.environ.get("TERM") != "dumb"
        self.tty = tty
        self.plain_seconds = plain_seconds
        self.clock = clock
        self.started = clock() if started is None else started
        self._lock = threading.RLock()
        self._status = ""  # the state line now shown (TTY) / last printed (plain)
        self._status_printed_at = self.started  # plain mode: the first state line after plain_seconds
        self._pending = ""  # plain mode: the newest state, not yet printed
        self._tty_at = float("-inf")  # TTY: when the state line was last rewritten

    def _stamp(self) -> str:
        return f"[{self.clock() - self.started:6.1f}s]"

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe must not fail the run
            pass

    def line(self, text: str) -> None:
        """A permanent line, e.g. '[  12.3s] Transform finished'."""
        with self._lock:
            clear = "\r\x1b[K" if self.tty and self._status else ""
            self._write(f"{clear}{self._stamp()} {text}\n")
            if self.tty and self._status:
                self._write(self._status)
            self._pending = ""

    def status(self, text: str, force: bool = False) -> None:
        """The running stage's state; '' clears it."""
        with self._lock:
            if self.tty:
                now = self.clock()
                if text and not force and now - self._tty_at < TTY_REFRESH_SECONDS:
                    return  # refreshed a moment ago
                self._tty_at = now
                shown = f"{self._stamp()} {text}" if text else ""
                width = _terminal_width()
                if len(shown) > width - 1:
                    shown = shown[:width - 2] + "…"
                self._write("\r\x1b[K" + shown)
                self._status = shown
                return
            if not text:
                self._pending = ""
                return
            now = self.clock()
            if force or now - self._status_printed_at >= self.plain_seconds:
                self._write(f"{self._stamp()} {text}\n")
                self._status_printed_at = now
                self._pending = ""
            else:
                self._pending = text

    def end_status(self) -> None:
        with self._lock:
            if self.tty and self._status:
                self._write("\r\x1b[K")
            self._status = ""
            self._pending = ""
            self._status_printed_at = self.clock()


def _terminal_width() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 120


# -- what a stage did, from Beam counters -----------------------------------------------------------
EXAMPLE_GEN_NAMESPACE = "click_log_example_gen"


def describe_counters(stage: str, counters: Dict[tuple, int], seconds: float) -> str:
    """One line of a Beam stage's counters: ``counters`` maps (namespace, name, step) to values."""
    def total(pred) -> int:
        return sum(v for k, v in counters.items() if pred(*k))

    rate = ""
    if stage_is_example_gen(counters):
        read = total(lambda ns, name, step: ns == EXAMPLE_GEN_NAMESPACE and name == "rows_read")
        emitted = total(lambda ns, name, step: ns == EXAMPLE_GEN_NAMESPACE and name == "rows_emitted")
        bad = total(lambda ns, name, step: ns == EXAMPLE_GEN_NAMESPACE and name.startswith("quarantined_"))
        if seconds > 0 and read:
            rate = f" ({_fmt_int(read / seconds)} rows/s)"
        return f"rows read {_fmt_int(read)}, emitted {_fmt_int(emitted)}, quarantined {_fmt_int(bad)}{rate}"
    parts = []
    # TFXIO's per-read counter of records (its '-num_rows' is a distribution, not a counter).
    decoded = {k: v for k, v in counters.items() if k[1].endswith("-num_raw_records") and k[0].endswith(".io")}
    analyzed = sum(v for k, v in decoded.items() if "AnalysisIndex" in k[2])
    transformed = sum(v for k, v in decoded.items() if "TransformIndex" in k[2])
    if analyzed or transformed:
        parts.append(f"rows analyzed {_fmt_int(analyzed)}, transformed {_fmt_int(transformed)}")
    elif decoded:
        parts.append(f"rows read {_fmt_int(sum(decoded.values()))}")
    evaluated = total(lambda ns, name, step: ns == "tfx.ModelAnalysis" and name == "evaluate_num_instances")
    if evaluated:
        parts.append(f"examples evaluated {_fmt_int(evaluated)}")
    rows = sum(decoded.values())
    if parts and seconds > 0 and rows:
        rate = f" ({_fmt_int(rows / seconds)} rows/s)"
    return ", ".join(parts) + rate


def stage_is_example_gen(counters: Dict[tuple, int]) -> bool:
    return any(k[0] == EXAMPLE_GEN_NAMESPACE for k in counters)


class BeamCounters:
    """Beam counters of the running stage, read from the DirectRunner while its bundles run.

    ``install()`` patches three places of Beam's FnApiRunner (2.59; each is optional, a Beam without
    it just shows less): ``BundleManager.process_bundle`` (a bundle's final metrics), the embedded
    worker's ``push`` (polls an in-process bundle's metrics while it runs) and ``ProgressRequester``
    (asks multi-processing workers for theirs every ``PROGRESS_SECONDS``). Only counters of the bundles
    run since ``reset()`` are summed.
    """

    def __init__(self, on_update: Callable[[], None], seconds: float = PROGRESS_SECONDS):
        self.on_update = on_update
        self.seconds = seconds
        self._lock = threading.Lock()
        self._by_bundle: Dict[str, Dict[tuple, int]] = {}

    def reset(self) -> None:
        with self._lock:
            self._by_bundle = {}

    def totals(self) -> Dict[tuple, int]:
        with self._lock:
            out: Dict[tuple, int] = {}
            for counters in self._by_bundle.values():
                for key, value in counters.items():
                    out[key] = out.get(key, 0) + value
            return out

    def record(self, bundle_id: str, monitoring_infos) -> None:
        """Keeps the newest user counters of one bundle (values are cumulative within a bundle)."""
        from apache_beam.metrics import monitoring_infos as mi
        counter_urn = getattr(mi, "USER_COUNTER_URN", "beam:metric:user:sum_int64:v1")
        counters: Dict[tuple, int] = {}
        for info in monitoring_infos:
            if info.urn != counter_urn:
                continue
            try:
                value = mi.extract_counter_value(info)
            except Exception:  # noqa: BLE001 -- an unreadable counter is not progress
                continue
            labels = info.labels
            key = (labels.get("NAMESPACE", ""), labels.get("NAME", ""), labels.get("PTRANSFORM", ""))
            counters[key] = counters.get(key, 0) + int(value)
        if not counters:
            return
        with self._lock:
            previous = self._by_bundle.get(bundle_id, {})
            merged = dict(previous)
            for key, value in counters.items():
                merged[key] = max(value, previous.get(key, 0))  # a late progress reply never goes back
            self._by_bundle[bundle_id] = merged
        try:
            self.on_update()
        except Exception:  # noqa: BLE001 -- progress never fails a run
            pass

    def install(self) -> bool:
        """Starts receiving counters (Beam is patched once per process); False if Beam has none of the hooks."""
        if self not in _ACTIVE:
            _ACTIVE.append(self)
        return _patch_beam()

    def uninstall(self) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)


_ACTIVE: list = []  # BeamCounters receiving counters
_PATCHED: list = []  # names of the Beam hooks in place (patched once per process)


def _record(bundle_id: str, monitoring_infos) -> None:
    for tracker in list(_ACTIVE):
        tracker.record(bundle_id, monitoring_infos)


def _poll_seconds() -> float:
    return min((t.seconds for t in _ACTIVE), default=PROGRESS_SECONDS)


def _patch_beam() -> bool:
    if _PATCHED:
        return True
    try:
        from apache_beam.portability.api import beam_fn_api_pb2
        from apache_beam.runners.portability.fn_api_runner import fn_runner, worker_handlers
    except ImportError:
        return False

    bundle_manager = getattr(fn_runner, "BundleManager", None)
    if bundle_manager is not None and hasattr(bundle_manager, "process_bundle"):
        original_process_bundle = bundle_manager.process_bundle

        def process_bundle(self, *args, **kwargs):
            result = original_process_bundle(self, *args, **kwargs)
            try:
                response = result[0]
                _record(response.instruction_id, response.process_bundle.monitoring_infos)
            except Exception:  # noqa: BLE001 -- progress never fails a run
                pass
            return result
        bundle_manager.process_bundle = process_bundle
        _PATCHED.append("BundleManager.process_bundle")

    embedded = getattr(worker_handlers, "EmbeddedWorkerHandler", None)
    if embedded is not None and hasattr(embedded, "push"):
        original_push = embedded.push

        def push(self, request):
            if not _ACTIVE or not request.HasField("process_bundle") or not hasattr(self, "worker"):
                return original_push(self, request)
            bundle_id = request.instruction_id
            stop = threading.Event()

            def poll():
                n = 0
                while not stop.wait(_poll_seconds()):
                    n += 1
                    try:
                        reply = self.worker.do_instruction(beam_fn_api_pb2.InstructionRequest(
                            instruction_id=f"sparsectr_progress_{bundle_id}_{n}",
                            process_bundle_progress=beam_fn_api_pb2.ProcessBundleProgressRequest(
                                instruction_id=bundle_id)))
                        if not reply.error:
                            _record(bundle_id, reply.process_bundle_progress.monitoring_infos)
                    except Exception:  # noqa: BLE001 -- the bundle may have just finished
                        pass
            poller = threading.Thread(target=poll, name="sparsectr-beam-progress", daemon=True)
            poller.start()
            try:
                return original_push(self, request)
            finally:
                stop.set()
        embedded.push = push
        _PATCHED.append("EmbeddedWorkerHandler.push")

    requester = getattr(fn_runner, "ProgressRequester", None)
    if requester is not None:
        original_init = requester.__init__

        def init(self, worker_handler, instruction_id, frequency, callback=None):
            if _ACTIVE and frequency is None and callback is None and not (
                    embedded is not None and isinstance(worker_handler, embedded)):
                frequency = _poll_seconds()
                callback = lambda progress: _record(instruction_id, progress.monitoring_infos)  # noqa: E731
            original_init(self, worker_handler, instruction_id, frequency, callback)
        requester.__init__ = init
        _PATCHED.append("ProgressRequester")
    return bool(_PATCHED)


# -- the Trainer, from Keras' own epoch lines ---------------------------------------------------------
_EPOCH = re.compile(r"^Epoch (\d+)/(\d+)$")
# What the Trainer logs when it starts writing the model (components/trainer_module.py).
EXPORTING = "exporting the model"
_EPOCH_END = re.compile(r"^(\d+)/(\d+) - (\d+)s - (.*)$")
_METRIC = re.compile(r"(\w+): ([-+0-9.e]+|nan|inf)")
_PER_STEP = re.compile(r"([0-9.]+)(s|ms|us)/step")
_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def route_keras_lines_to_logging() -> bool:
    """Keras (tf_keras) prints fit()'s lines to stdout; route them to absl logging (``io_utils``), where
    ``RunProgress`` turns them into progress lines. False when tf_keras is not importable."""
    try:
        from tf_keras.src.utils import io_utils, keras_logging
    except ImportError:
        return False
    keras_logging.INTERACTIVE_LOGGING_DEFAULT = False  # threads other than this one
    io_utils.disable_interactive_logging()
    return True


class RunProgress(logging.Filter):
    """A filter on the ``absl`` logger: stage start/finish and Keras epoch records become progress.

    ``verbose``: the records themselves pass too (else they are dropped here).
    """

    STAGE_MESSAGES = ("Component %s is running.", "Component %s is finished.")

    def __init__(self, display: Display, verbose: bool = False, batch_size: Optional[int] = None,
                 beam: Optional[BeamCounters] = None, heartbeat_seconds: float = 1.0,
                 on_stage_start: Optional[Callable[[], None]] = None):
        super().__init__()
        self.display = display
        self.verbose = verbose
        self.batch_size = batch_size
        self.beam = beam if beam is not None else BeamCounters(self._beam_update)
        self.stage: Optional[str] = None
        self.stage_started = 0.0
        self.epoch: Optional[str] = None
        self.last_state = ""
        self._last_plain = 0.0
        self.on_stage_start = on_stage_start
        self._stop = threading.Event()
        self._heartbeat_seconds = heartbeat_seconds
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle --
    def start(self) -> "RunProgress":
        self.beam.install()
        route_keras_lines_to_logging()
        self._thread = threading.Thread(target=self._heartbeat, name="sparsectr-progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.beam.uninstall()
        self.display.end_status()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self._heartbeat_seconds):
            if self.stage:
                self._show(force=False)

    # -- records --
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            handled = self._handle(record)
        except Exception:  # noqa: BLE001 -- progress never fails a run
            handled = False
        return self.verbose or not handled

    def _handle(self, record: logging.LogRecord) -> bool:
        if record.msg in self.STAGE_MESSAGES and record.args:
            name = str(record.args[0])
            if "running" in record.msg:
                self._stage_start(name)
            else:
                self._stage_finish(name)
            return True
        if record.levelno > logging.INFO or not isinstance(record.msg, str):
            return False
        text = record.getMessage().strip()
        m = _EPOCH.match(text)
        if m:
            self.epoch = f"epoch {m.group(1)}/{m.group(2)}"
            self._show(force=True)
            return True
        m = _EPOCH_END.match(text)
        if m:
            self.display.line(f"{self.stage or 'Trainer'} {self._epoch_line(m)}")
            return True
        if text.startswith(EXPORTING):
            self.epoch = "exporting"  # the Trainer's heartbeat after its last epoch
            self._show(force=True)
            return True
        return False

    def _epoch_line(self, m) -> str:
        steps, seconds = int(m.group(1)), int(m.group(3))
        metrics = dict(_METRIC.findall(m.group(4)))
        parts = [f"{self.epoch or 'epoch'}: {steps} steps in {seconds}s"]
        per_step = _PER_STEP.search(m.group(4))  # Keras' '- 12ms/step': finer than whole seconds
        step_seconds = (float(per_step.group(1)) * _UNIT[per_step.group(2)] if per_step
                        else (seconds / steps if steps else 0))
        if self.batch_size and step_seconds > 0:
            parts[0] += f" ({_fmt_int(self.batch_size / step_seconds)} examples/s)"
        shown = [f"{k} {float(metrics[k]):.4f}" for k in ("loss", "auc", "val_loss", "val_auc") if k in metrics]
        return ", ".join(parts + shown)

    def _stage_start(self, name: str) -> None:
        self.display.end_status()
        self.stage, self.stage_started, self.epoch, self.last_state = name, time.time(), None, ""
        self._last_plain = self.stage_started
        self.beam.reset()
        if self.on_stage_start:
            self.on_stage_start()
        self.display.line(f"{name} running")

    def _stage_finish(self, name: str) -> None:
        state = self._state()
        self.display.end_status()
        self.stage = None
        self.display.line(f"{name} finished" + (f": {state}" if state else ""))

    def _state(self) -> str:
        if not self.stage:
            return ""
        counters = self.beam.totals()
        return describe_counters(self.stage, counters, time.time() - self.stage_started) if counters else ""

    def _beam_update(self) -> None:
        self._show(force=False)

    def _show(self, force: bool) -> None:
        stage = self.stage
        if not stage:
            return
        state = self._state()
        elapsed = time.time() - self.stage_started
        extra = ", ".join(p for p in (self.epoch, state) if p)
        text = f"{stage} running {elapsed:.0f}s" + (f": {extra}" if extra else "")
        if self.display.tty:
            self.display.status(text)
            return
        # Plain lines: none for a stage shorter than plain_seconds (its finish line says it all);
        # then the counts when they changed, at most every plain_seconds; without counts (e.g. the
        # Trainer inside an epoch) a heartbeat every 4 * plain_seconds.
        now = time.time()
        if elapsed < self.display.plain_seconds:
            return
        if extra and extra != self.last_state:
            if force or now - self._last_plain >= self.display.plain_seconds:
                self.display.status(text, force=True)
                self.last_state, self._last_plain = extra, now
        elif now - self._last_plain >= 4 * self.display.plain_seconds:
            self.display.status(text, force=True)
            self._last_plain = now
