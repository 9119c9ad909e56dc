"""Run the pipeline locally: LocalDagRunner, SQLite ML Metadata, Beam DirectRunner."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from typing import Any, Dict, Iterator, Optional, Tuple

from components.dataset_spec import DatasetSpec, load_spec
from pipelines import generator, summary as run_summary
from pipelines.config import PipelineConfig, beam_pipeline_args


class DataError(ValueError):
    """Input data that cannot be used; the message is one line naming the path."""


def check_data_root(path: str) -> None:
    """Fail early, with one line naming the path, on input that no pipeline step could read."""
    if not os.path.exists(path):
        raise DataError(f"--data {path}: no such file or directory")
    if not os.path.isdir(path):
        raise DataError(f"--data {path}: not a directory (give the folder that holds the click-log files)")
    files = []
    for root, _, names in os.walk(path, followlinks=True):
        files += [os.path.join(root, n) for n in names if not n.startswith(".")]
    links = [os.path.join(r, n) for r, ds, _ in os.walk(path) for n in ds if os.path.islink(os.path.join(r, n))]
    if not files and not links:
        raise DataError(f"--data {path}: the folder holds no click-log files")
    for f in sorted(files):
        try:
            with open(f, "rb") as handle:
                handle.read(1)
        except OSError as e:
            raise DataError(f"--data {path}: cannot read {f}: {e.strerror or e}") from None


@contextlib.contextmanager
def run_scratch(output_dir: str) -> Iterator[str]:
    """Temporary files of one local run under ``<output_dir>/.scratch/``, removed when it ends.

    Beam leaves its pipeline temp folders behind, and so does TFX its ``tfx_ephemeral`` sdist where
    it still builds one (a non-direct runner, `components.beam_dependencies`): on a machine that
    retrains on a schedule, /tmp would fill up run after run. The run's process and its Beam worker
    processes (TMPDIR) write them here instead.
    """
    root = _mkdirs(os.path.join(output_dir, ".scratch"))
    for name in os.listdir(root):  # left by a run that was killed
        pid = name.split("-")[1] if name.startswith("run-") and name.count("-") >= 2 else ""
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    path = tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=root)
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = path, path
    try:
        yield path
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(path, ignore_errors=True)


def _mkdirs(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# Generated data is one file per daily span; a run reads the newest one (data.span_window 1).
GENERATED_PATTERN = "clicks-{SPAN:5}.tsv"


def prepare_data(config: PipelineConfig) -> Tuple[str, DatasetSpec, Optional[Dict[str, Any]]]:
    """The data folder to ingest, its spec, and the generator's report when the data is generated.

    Generated data behaves like a schedule: the first run writes span 0; once a model has been
    pushed, each run writes the next span of the same planted truth (the next day's logs) and, through
    `data.input_pattern`, ingests only that one. A different row count or generator starts over.
    """
    spec = load_spec(config.data.dataset_format)
    if config.data.data_root:
        check_data_root(config.data.data_root)
        return config.data.data_root, spec, _truth_report(config.data.ground_truth)
    root = os.path.join(config.output_dir, "generated")
    data_dir = os.path.join(root, "data")
    truth_path = os.path.join(root, "ground_truth.json")
    gen_cfg = generator.preset_config(config.data.generator_preset, seed=config.data.generator_seed)
    sets = _generated_sets(truth_path, gen_cfg, data_dir)
    if not sets or any(s["rows"] != config.data.generated_rows for s in sets.values()):
        for name in os.listdir(data_dir) if os.path.isdir(data_dir) else []:
            os.remove(os.path.join(data_dir, name))
        if os.path.exists(truth_path):
            os.remove(truth_path)
        sets, span = {}, 0
    else:
        span = max(sets) + 1 if _has_pushed_model(config) else max(sets)
    if span not in sets:
        generator.generate(data_dir, config.data.generated_rows, gen_cfg, span=span, truth_path=truth_path)
    config.data.input_pattern, config.data.span_window = GENERATED_PATTERN, 1
    return data_dir, spec, _truth_report(truth_path, f"clicks-{span:05d}.tsv")


def _generated_sets(truth_path: str, gen_cfg, data_dir: str) -> Dict[int, Dict[str, Any]]:
    """span -> the generator's report of each generated span whose file is still there."""
    if not os.path.exists(truth_path):
        return {}
    truth = generator.GroundTruth.load(truth_path).d
    if truth.get("generator") != gen_cfg.to_dict():
        return {}
    return {s["span"]: s for name, s in truth.get("sets", {}).items()
            if "span" in s and os.path.exists(os.path.join(data_dir, name))}


def _has_pushed_model(config: PipelineConfig) -> bool:
    from serving import model_versions
    return bool(model_versions.versions(os.path.join(config.serving_dir, config.serving.model_name)))


def _truth_report(truth_path: Optional[str], set_name: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """Bayes-optimal metrics of one generated set (`set_name`), or over all sets in a ground-truth
    file (row-weighted)."""
    if not truth_path or not os.path.exists(truth_path):
        return None
    truth = generator.GroundTruth.load(truth_path).d
    sets = [s for name, s in truth.get("sets", {}).items() if set_name in (None, name)]
    if not sets:
        return None
    rows = sum(s["rows"] for s in sets)
    return {"rows": rows, "generator": truth["generator"], "truth_path": truth_path,
            "bayes_auc": sum(s["bayes_auc"] * s["rows"] for s in sets) / rows,
            "bayes_logloss": sum(s["bayes_logloss"] * s["rows"] for s in sets) / rows}


def score_pushed_model(config: PipelineConfig, data_root: str, rows: int) -> Dict[str, Any]:
    """Score the first `rows` lines of the data through a local TF Serving process (REST and gRPC)."""
    from pipelines.demo import score_lines
    files = sorted(os.path.join(r, n) for r, _, names in os.walk(data_root) for n in names if not n.startswith("."))
    with open(files[0], encoding="utf-8", errors="replace") as f:
        lines = [line for _, line in zip(range(rows + 1), f)]
    result = score_lines(config.serving_dir, lines, config.data.dataset_format, config.serving.model_name, rows)
    return {"file": files[0], "model_version": result["model_version"], "labels": result["labels"],
            "rest": [round(x, 6) for x in result["rest"]], "grpc": [round(x, 6) for x in result["grpc"]]}


def run(config: PipelineConfig, score_rows: int = 0) -> Dict[str, Any]:
    """Run the pipeline once; always writes <output>/summary.json and returns it."""
    started = time.time()
    data_root, spec, truth = prepare_data(config)  # before the heavy imports: bad input fails fast
    os.makedirs(config.output_dir, exist_ok=True)
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    from pipelines.pipeline import create_pipeline

    result: Dict[str, Any] = {"data_root": data_root, "dataset_format": spec.name}
    try:
        input_bytes = sum(os.path.getsize(os.path.join(r, n)) for r, _, names in os.walk(data_root) for n in names)
        result["beam_pipeline_args"] = beam_pipeline_args(config, input_bytes)
        with run_scratch(config.output_dir):
            LocalDagRunner().run(
                create_pipeline(config, data_root, spec, input_bytes=input_bytes))
        result["status"] = "succeeded"
    except Exception as e:  # noqa: BLE001 -- reported in the summary and as the CLI's one-line error
        result["status"] = "failed"
        result["error"] = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        result["error_type"] = type(e).__name__
    result.update(run_summary.collect(config.metadata_sqlite, config.pipeline_name))
    if truth:
        result["bayes_auc"] = truth["bayes_auc"]
        result["bayes_logloss"] = truth["bayes_logloss"]
    result["serving_dir"] = os.path.join(config.serving_dir, config.serving.model_name)
    if score_rows and (result.get("push") or {}).get("pushed"):
        try:
            result["demo_scores"] = score_pushed_model(config, data_root, score_rows)
        except Exception as e:  # noqa: BLE001 -- the model is pushed; scoring is a demonstration
            result["demo_scores"] = {"error": (str(e).strip().splitlines() or [type(e).__name__])[-1]}
    result["duration_s"] = round(time.time() - started, 1)
    report_path = os.path.join(config.output_dir, "report.html")
    try:
        from pipelines import report
        result["report"] = report.write(result, report_path)
    except Exception as e:  # noqa: BLE001 -- the report describes the run; it never fails it
        result["report_error"] = (str(e).strip().splitlines() or [type(e).__name__])[-1]
    run_summary.write(result, config.summary_path)
    return result
