"""The Evaluator's cost: TFX's Evaluator executor as the pipeline runs it (`components.gates.
BaselineEvaluator`, the pipeline's `eval_config`), with its schema narrowed to the features TFMA reads
(label, slice fields) against no schema (every raw feature decoded and unbatched), on real eval files.

    python -m benchmarks.evaluator_bench \
        --examples output/scale_run/adam/pipeline_root/ClickLogExampleGen/examples/1 \
        --model output/scale_run/adam/serving/ctr/<version> \
        --schema output/scale_run/adam/pipeline_root/SchemaGen/schema/3/schema.pbtxt \
        --files 1 --out benchmarks/results/evaluator

Each case is one `Do()` in this process (DirectRunner in memory, one worker), timed without process
and TensorFlow start-up; cases alternate (narrowed, full, narrowed, full, ...) so that a shared
machine's load falls on both alike. ``models``: 1 = the candidate alone (a first run), 2 = candidate
and baseline (every scheduled retrain after the first: the same model as both here). The metrics of
the narrowed and full runs must agree to 1e-9 relative: TFMA sizes its batches by timing, so sums of
floats (mean prediction, calibration) may differ in their last digits from run to run.
"""
from __future__ import annotations

import argparse
import glob
import os
import platform
import shutil
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from benchmarks import results_files

CASES = ("narrowed", "full")
METRICS_RTOL = 1e-9


def eval_examples_artifact(examples_dir: str, files: int, tmp: str, copies: int = 1):
    """An Examples artifact whose eval split holds the first `files` files of `examples_dir`'s, each
    `copies` times (a small eval split read as a larger one)."""
    from tfx.types import standard_artifacts
    paths = sorted(glob.glob(os.path.join(examples_dir, "Split-eval", "*")))[:files]
    if not paths:
        raise SystemExit(f"{examples_dir}: no Split-eval files")
    split = os.path.join(tmp, "examples", "Split-eval")
    os.makedirs(split)
    for copy in range(copies):
        for path in paths:
            os.symlink(os.path.abspath(path), os.path.join(split, f"copy{copy}-{os.path.basename(path)}"))
    artifact = standard_artifacts.Examples()
    artifact.uri = os.path.dirname(split)
    artifact.split_names = '["eval"]'
    return artifact


def schema_artifact(schema_file: str, tmp: str):
    """A Schema artifact under `tmp` holding a copy of `schema_file`."""
    from tfx.types import standard_artifacts
    artifact = standard_artifacts.Schema()
    artifact.uri = os.path.join(tmp, "schema")
    os.makedirs(artifact.uri)
    shutil.copy(schema_file, os.path.join(artifact.uri, "schema.pbtxt"))
    return artifact


def _model_artifact(saved_model: str, tmp: str, name: str, baseline: bool = False):
    from tfx.types import standard_artifacts
    artifact = standard_artifacts.Model()
    artifact.uri = os.path.join(tmp, name)
    os.makedirs(artifact.uri)
    os.symlink(os.path.abspath(saved_model), os.path.join(artifact.uri, "Format-Serving"))
    if baseline:
        artifact.set_int_custom_property("found", 1)
    return artifact


def evaluate(case: str, models: int, examples, saved_model: str, schema_file: str, tmp: str,
             config=None, tfma_loader: bool = False) -> Dict:
    """One Evaluator run: wall seconds and its metrics ({slice/metric/model: value}); `config`: a
    tfma.EvalConfig (default: the pipeline's); `tfma_loader`: without the pipeline's module_path
    (`components.eval_model`), TFMA's own model loader."""
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils
    import tensorflow_model_analysis as tfma
    from components.dataset_spec import load_spec
    from components.gates import _BaselineEvaluatorExecutor
    from pipelines.config import PipelineConfig
    from pipelines.pipeline import EVAL_MODEL_MODULE, eval_config
    run = tempfile.mkdtemp(dir=tmp, prefix=f"{case}-{models}-")
    inputs = {"examples": [examples], "model": [_model_artifact(saved_model, run, "model")]}
    if models == 2:
        inputs["baseline_model"] = [_model_artifact(saved_model, run, "baseline", baseline=True)]
    if case == "narrowed":
        inputs["schema"] = [schema_artifact(schema_file, run)]
    evaluation, blessing = standard_artifacts.ModelEvaluation(), standard_artifacts.ModelBlessing()
    evaluation.uri, blessing.uri = os.path.join(run, "evaluation"), os.path.join(run, "blessing")
    config = config or eval_config(PipelineConfig(), load_spec("criteo"))
    exec_properties = {"eval_config": proto_utils.proto_to_json(config)}
    if not tfma_loader:
        exec_properties["module_path"] = EVAL_MODEL_MODULE
    start = time.perf_counter()
    _BaselineEvaluatorExecutor().Do(inputs, {"evaluation": [evaluation], "blessing": [blessing]}, exec_properties)
    wall = time.perf_counter() - start
    metrics = {}
    for sliced in tfma.load_metrics(evaluation.uri):
        slice_name = " ".join(str(sliced.slice_key).split()) or "overall"
        for kv in sliced.metric_keys_and_values:
            key = f"{slice_name}/{kv.key.name}/{kv.key.model_name}{'/diff' if kv.key.is_diff else ''}"
            metrics[key] = kv.value.double_value.value
    return {"case": case, "models": models, "wall_s": round(wall, 2), "metrics": metrics}


def add_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    """The options of an Evaluator benchmark (this one, evaluator_metrics_bench); `out`: the default
    output name under benchmarks/results."""
    parser.add_argument("--examples", required=True, help="an ExampleGen Examples artifact folder")
    parser.add_argument("--model", required=True, help="a pushed SavedModel (serving_default over tf.Examples)")
    parser.add_argument("--schema", required=True, help="the pipeline's schema.pbtxt (SchemaGen)")
    parser.add_argument("--files", type=int, default=1, help="eval files to read")
    parser.add_argument("--copies", type=int, default=1, help="times each eval file is read")
    parser.add_argument("--models", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", out))


def run_cases(args: argparse.Namespace, cases: Sequence[str],
              evaluate_case: Callable[[str, int, Any, str], Dict]) -> Tuple[List[Dict], float]:
    """Each of `cases` for every model count of `args` and repeat, cases alternating:
    (runs, each with its "case", rows evaluated). `evaluate_case(case, models, examples, tmp)` runs one."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        examples = eval_examples_artifact(args.examples, args.files, tmp, args.copies)
        for models in args.models:
            for _ in range(args.repeats):
                for case in cases:
                    runs.append(dict(evaluate_case(case, models, examples, tmp), case=case))
                    print(f"{case:16s} models={models}  {runs[-1]['wall_s']:7.1f} s", flush=True)
    rows = max(v for k, v in runs[0]["metrics"].items() if k.startswith("overall/example_count/"))
    return runs, rows


def compare_cases(args, cases: Sequence[str], evaluate_case: Callable, benchmark: str) -> Dict:
    """Runs `cases` alternating (`run_cases`); the report of the comparison so far: what ran on what,
    the runs, and the 1-min load average before and after (the caller adds its "summary")."""
    load_before = os.getloadavg()[0]
    runs, rows = run_cases(args, cases, evaluate_case)
    return {"benchmark": benchmark, "examples": os.path.abspath(args.examples), "model": os.path.abspath(args.model),
            "eval_files": args.files, "copies": args.copies, "rows_evaluated": rows, "repeats": args.repeats,
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)], "runs": runs}


def median_walls(runs: List[Dict], cases: Sequence[str]) -> List[Tuple[int, List[Dict], Dict[str, float]]]:
    """Per model count, ascending: (models, its runs, {case: median wall s})."""
    out = []
    for models in sorted({r["models"] for r in runs}):
        same = [r for r in runs if r["models"] == models]
        out.append((models, same, {case: statistics.median(r["wall_s"] for r in same if r["case"] == case)
                                   for case in cases}))
    return out


def comparison_header(report: Dict) -> List[str]:
    """The first lines of a `compare_cases` report's text: what ran on what, and how it was timed."""
    return [report["benchmark"],
            f"{report['rows_evaluated']:,.0f} eval rows ({report['eval_files']} file(s) of {report['examples']}, "
            f"each read {report.get('copies', 1)} time(s)); model {report['model']}",
            f"executor Do() wall s, median of {report['repeats']}, cases alternating; DirectRunner in memory; "
            f"1-min load average {report['load_average'][0]} before, {report['load_average'][1]} after"]


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, "evaluator")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    runs, rows = run_cases(args, CASES, lambda case, models, examples, tmp: evaluate(
        case, models, examples, args.model, args.schema, tmp))
    report = {"benchmark": "TFX Evaluator executor (BaselineEvaluator), schema narrowed vs none",
              "examples": os.path.abspath(args.examples), "model": os.path.abspath(args.model),
              "eval_files": args.files, "rows_evaluated": rows, "repeats": args.repeats,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_average_before": round(load_before, 2),
                          "load_average_after": round(os.getloadavg()[0], 2)},
              "runs": runs}
    write_report(report, args.out)


def max_relative_difference(runs: List[Dict]) -> float:
    """The largest relative difference of one metric between any two of `runs`."""
    worst = 0.0
    for key in set().union(*(r["metrics"] for r in runs)):
        values = [r["metrics"].get(key) for r in runs]
        if any(v is None for v in values):
            return float("inf")
        scale = max(abs(v) for v in values) or 1.0
        worst = max(worst, (max(values) - min(values)) / scale)
    return worst


def write_report(report: Dict, out: str) -> None:
    """Adds the summary (per model count: medians, speed-up, metric agreement) and writes OUT.json/.txt."""
    runs, summary = report["runs"], []
    for models in sorted({r["models"] for r in runs}):
        same = [r for r in runs if r["models"] == models]
        walls = {case: statistics.median(r["wall_s"] for r in same if r["case"] == case) for case in CASES}
        diff = max_relative_difference(same)
        summary.append({"models": models, "narrowed_s": walls["narrowed"], "full_s": walls["full"],
                        "speed_up": round(walls["full"] / walls["narrowed"], 2),
                        "metrics_max_relative_difference": diff, "metrics_agree": diff <= METRICS_RTOL})
    report["summary"] = summary
    machine = report["machine"]
    lines = [report["benchmark"],
             f"{report['rows_evaluated']:,.0f} eval rows ({report['eval_files']} file(s) of {report['examples']}); "
             f"model {report['model']}",
             f"executor Do() wall s, median of {report['repeats']}, cases alternating; DirectRunner in memory; "
             f"load average {machine['load_average_before']} before, {machine['load_average_after']} after",
             f"metrics agree: every metric of every run within {METRICS_RTOL:g} relative (TFMA batches by timing, "
             "so float sums may differ in their last digits)", "",
             "models  narrowed_s  full_s  speed-up  metrics max rel. diff  agree"]
    lines += [f"{s['models']:6d}  {s['narrowed_s']:10.1f}  {s['full_s']:6.1f}  {s['speed_up']:7.2f}x  "
              f"{s['metrics_max_relative_difference']:21.1e}  {'yes' if s['metrics_agree'] else 'NO'}" for s in summary]
    results_files.write(out, report, "\n".join(lines))


if __name__ == "__main__":
    main()
