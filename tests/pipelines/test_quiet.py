"""Quiet output (serving/quiet.py) and live progress (pipelines/progress.py).

The line budget of a whole `python -m pipelines run` is checked on the e2e run's own output
(tests/pipelines/test_local_pipeline.py::test_run_output_is_quiet)."""
import io
import logging
import os
import subprocess
import sys
import time

import pytest

from serving import quiet
from tests.conftest import REPO_ROOT

# Lines the issue quotes (and others seen in runs), each known-harmless.
NOISE = [
    "WARNING:absl:ArtifactQuery.property_predicate is not supported.",
    "WARNING:absl:Examples artifact does not have payload_format custom property. Falling back to FORMAT_TF_EXAMPLE",
    "2026-11-30 06:36:27.794384: E external/local_xla/xla/stream_executor/cuda/cuda_fft.cc:479] Unable to register "
    "cuFFT factory: Attempting to register factory for plugin cuFFT when one has already been registered",
    "E0000 cuda_dnn.cc:10575] Unable to register cuDNN factory: Attempting to register factory",
    "E0000 cuda_blas.cc:1442] Unable to register cuBLAS factory: Attempting to register factory",
    "/x/google/api_core/_python_version_support.py:246: FutureWarning: You are using a non-supported Python "
    "version (3.10.13). Google will not post any further updates to google.api_core",
    "WARNING:absl:Tables initialized inside a tf.function  will be re-initialized on every invocation",
    "WARNING:apache_beam.io.tfrecordio:Couldn't find python-snappy so the implementation is not as fast",
    "WARNING:absl:Not using the in-place Transform because the following features require analyzing: ('C1', 'C2')",
    "WARNING:tensorflow:AutoGraph could not transform <function _signatures.<locals>.serving_default at 0x7f9> "
    "and will run it as-is.",
]


def test_known_noise_is_harmless_and_real_messages_are_not():
    assert quiet.filter_lines(NOISE) == []
    real = ["ERROR:absl:Pusher failed: disk full", "WARNING:absl:cold start: no pushed model yet",
            "Traceback (most recent call last):", "ValueError: bad input"]
    assert quiet.filter_lines(real) == real


def _record(level, msg, name="absl", args=()):
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_log_filter_drops_harmless_and_info_records_keeps_real_warnings():
    flt = quiet.HarmlessFilter(logging.WARNING)
    assert not flt.filter(_record(logging.WARNING, "ArtifactQuery.property_predicate is not supported."))
    assert not flt.filter(_record(logging.INFO, "Running driver for Trainer"))
    assert flt.filter(_record(logging.WARNING, "cold start: %s", args=("no pushed model yet",)))
    assert flt.filter(_record(logging.ERROR, "something broke"))
    assert quiet.HarmlessFilter(logging.NOTSET).filter(_record(logging.INFO, "serving version 3"))


def test_quiet_process_sets_levels_and_warning_filters_for_children():
    env = {"PYTHONWARNINGS": "error::ResourceWarning"}
    quiet.quiet_process(False, environ=env)
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "3" and env["GRPC_VERBOSITY"] == "ERROR"
    entries = env["PYTHONWARNINGS"].split(",")
    assert entries[0] == "error::ResourceWarning"  # the user's own entry is kept, first
    assert "ignore:You are using a non-supported Python version:FutureWarning" in entries
    untouched = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    quiet.quiet_process(False, environ=untouched)
    assert untouched["TF_CPP_MIN_LOG_LEVEL"] == "0"  # what the user set wins
    verbose = {}
    quiet.quiet_process(True, environ=verbose)
    assert verbose == {}


def test_importing_tensorflow_is_silent_in_a_quiet_child_process():
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    quiet.quiet_process(False, environ=env)
    env.update(PYTHONPATH=REPO_ROOT, TF_USE_LEGACY_KERAS="1")
    code = "import tensorflow, google.api_core, apache_beam; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok"
    assert proc.stderr.strip() == "", proc.stderr


def test_entry_points_are_silent():
    # The examples: `python -m serving.local_server --help` (what `make serve` starts) printed
    # TF's cuFFT/cuDNN/cuBLAS errors and google.api_core's FutureWarning.
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    env.update(PYTHONPATH=REPO_ROOT, TF_USE_LEGACY_KERAS="1")
    for args in (["pipelines", "--help"], ["pipelines", "score", "--help"], ["serving.local_server", "--help"]):
        proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and proc.stderr == "", (args, proc.stderr)
        assert "usage:" in proc.stdout


# -- progress --------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_plain_display_prints_state_lines_at_most_every_interval():
    out, clock = io.StringIO(), FakeClock()
    display = __import__("pipelines.progress", fromlist=["Display"]).Display(out, tty=False, plain_seconds=10,
                                                                              clock=clock)
    display.line("Transform running")
    display.status("rows 1")  # within the first 10 s: not printed
    clock.t += 11
    display.status("rows 2")
    clock.t += 3
    display.status("rows 3")  # 3 s after the last: not printed
    clock.t += 8
    display.status("rows 4")
    display.line("Transform finished")
    assert out.getvalue().splitlines() == ["[   0.0s] Transform running", "[  11.0s] rows 2", "[  22.0s] rows 4",
                                           "[  22.0s] Transform finished"]
    assert "\r" not in out.getvalue()


def test_tty_display_refreshes_one_line():
    from pipelines.progress import Display
    out, clock = io.StringIO(), FakeClock()
    display = Display(out, tty=True, clock=clock)
    display.status("Transform running 1s")
    display.status("Transform running 1s: rows 5")  # a moment later: not redrawn
    assert "rows 5" not in out.getvalue()
    clock.t += 1
    display.status("Transform running 2s: rows 10")
    display.line("Transform finished")
    text = out.getvalue()
    assert text.count("\r\x1b[K") >= 3  # each refresh rewrites the same line; the permanent line clears it
    assert "[   1.0s] Transform running 2s: rows 10" in text and text.endswith(
        "[   1.0s] Transform finished\n[   1.0s] Transform running 2s: rows 10")


def test_run_progress_turns_records_into_stage_and_epoch_lines():
    from pipelines.progress import Display, RunProgress
    out = io.StringIO()
    progress = RunProgress(Display(out, tty=False), batch_size=256)
    logger = logging.getLogger("test_quiet.absl")
    logger.addFilter(progress)
    logger.propagate = False
    seen = []
    handler = logging.Handler()
    handler.emit = lambda r: seen.append(r.getMessage())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.info("Component %s is running.", "Trainer")
    logger.info("Epoch 1/2")
    logger.info("63/63 - 12s - loss: 0.4512 - auc: 0.7801 - val_loss: 0.4600 - val_auc: 0.7702 - 12s/epoch - 190ms/step")
    logger.info("exporting the model and its warm-start state")
    assert progress.epoch == "exporting"  # what the heartbeat shows until the Trainer finishes
    logger.info("Component %s is finished.", "Trainer")
    logger.warning("a real warning")
    lines = [l.split("] ", 1)[1] for l in out.getvalue().splitlines()]
    assert lines == ["Trainer running",
                     "Trainer epoch 1/2: 63 steps in 12s (1,347 examples/s), loss 0.4512, auc 0.7801, "
                     "val_loss 0.4600, val_auc 0.7702",
                     "Trainer finished"]
    assert seen == ["a real warning"]  # the consumed records are not logged again


def test_describe_counters():
    from pipelines.progress import describe_counters
    eg = {("click_log_example_gen", "rows_read", "Parse"): 1000, ("click_log_example_gen", "rows_emitted", "Parse"): 990,
          ("click_log_example_gen", "quarantined_bad_label", "Parse"): 7,
          ("click_log_example_gen", "quarantined_wrong_field_count", "Parse"): 3}
    assert describe_counters("ClickLogExampleGen", eg, 2.0) == \
        "rows read 1,000, emitted 990, quarantined 10 (500 rows/s)"
    tr = {("tfx.Transform.io", "LogicalFormat[tf_example]-PhysicalFormat[tfrecords_gzip]-num_raw_records",
           "TFXIOReadAndDecode[AnalysisIndex0]/RawRecordBeamSource"): 800,
          ("tfx.Transform.io", "LogicalFormat[tf_example]-PhysicalFormat[tfrecords_gzip]-num_raw_records",
           "TFXIOReadAndDecode[TransformIndex0]/RawRecordBeamSource"): 300}
    assert describe_counters("Transform", tr, 0) == "rows analyzed 800, transformed 300"
    ev = {("tfx.Evaluator.io", "x-num_raw_records", "ReadFromTFRecordToArrow[eval][0]"): 600,
          ("tfx.ModelAnalysis", "evaluate_num_instances", "ExtractAndEvaluate"): 1200}
    assert describe_counters("Evaluator", ev, 0) == "rows read 600, examples evaluated 1,200"
    assert describe_counters("X", {("other", "n", "s"): 1}, 1) == ""


def _run_counting_pipeline(mode: str, updates: list):
    import apache_beam as beam

    from pipelines.progress import BeamCounters

    class Fn(beam.DoFn):
        def process(self, n):
            import time as t
            from apache_beam.metrics import Metrics
            counter = Metrics.counter("click_log_example_gen", "rows_read")
            for _ in range(6):
                t.sleep(0.5)
                counter.inc(100)
            yield n

    tracker = BeamCounters(lambda: updates.append((time.time(), dict(tracker.totals()))), seconds=0.5)
    assert tracker.install()
    options = beam.options.pipeline_options.PipelineOptions(
        runner="DirectRunner", direct_running_mode=mode, direct_num_workers=2 if mode != "in_memory" else 1)
    try:
        with beam.Pipeline(options=options) as p:
            _ = p | beam.Create([1, 2]) | beam.Reshuffle() | beam.ParDo(Fn())
    finally:
        tracker.uninstall()
    return tracker


@pytest.mark.parametrize("mode", ["in_memory", "multi_processing"])
def test_beam_counters_are_read_while_a_bundle_runs(mode):
    updates = []
    started = time.time()
    tracker = _run_counting_pipeline(mode, updates)
    done = time.time()
    key = ("click_log_example_gen", "rows_read")
    values = [(t, sum(v for k, v in c.items() if k[:2] == key)) for t, c in updates]
    assert values and values[-1][1] == 1200, values  # 2 elements x 6 x 100, at the end
    # Some update came before the bundles ended, with a partial count: live progress.
    assert any(0 < v < 1200 for _, v in values), values
    assert all(started <= t <= done for t, _ in values)
    tracker.reset()
    assert tracker.totals() == {}
