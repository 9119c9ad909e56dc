"""The Trainer on a finished run's inputs: the code as it is against earlier versions of some of its
parts (the export, the sparsity control, the input).

    TF_USE_LEGACY_KERAS=1 PYTHONPATH=. .venv/bin/python -m benchmarks.trainer_run_bench \
        --run output [--repeats 2] [--out benchmarks/results/trainer_run]

`--run` is the output folder of a local run (``python -m pipelines run --output DIR``, e.g. ``make
demo``'s ``output``): its ML Metadata names the last Trainer execution, whose inputs (Transform's
examples and graph, schema, base model) and exec properties are run again by TFX's own Trainer
executor (``GenericExecutor``, ``components.trainer_module.run_fn``), each time in a new process
(tracing and autograph caches are per process, as in a pipeline run). Variants, alternating:

* ``current``: the code as it is;
* ``previous_export``: the export as it was before (autograph converting the signatures and
  everything they call, and Keras tracing every layer's call into the SavedModel), reproduced here
  by patching ``tf.function`` in ``components.export_signatures`` and ``model.save``;
* ``per_table_control``: the sparsity target's control points as they were before (the optimizer's
  hyperparameters and regularizer scale computed with eager ops once per table, not once per
  dtype), its previous ``table_state`` reproduced here verbatim;
* ``eager_control``: the control points' reads of the tables and duals and assigns of l21 one eager
  op per variable, as before, instead of one function call for all of them;
* ``autotuned_input``: the input datasets with tf.data's autotuning on, as before
  (``components.distributed.without_autotuning`` patched to leave a dataset as it is);
* ``autograph_input``: autograph converting the functions the input datasets map (parse, the
  transform layer per batch without materializing, the finite check, the file reader), as before
  (their ``do_not_convert`` undone).

``--variants`` runs some of them (``current`` always among them).

Reports per run: the fit and export seconds (``training.json``), the SavedModel's bytes, the reached
sparsity and l21 (the control must not change them), and the largest difference between all runs'
``serving_default`` scores on the run's eval examples.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import types

from benchmarks import results_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("current", "previous_export", "per_table_control", "eager_control", "autotuned_input",
            "autograph_input")


def trainer_inputs(run_dir: str):
    """(input_dict, exec_properties) of the last Trainer execution recorded in `run_dir`'s ML Metadata."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    from tfx.types import artifact_utils, standard_artifacts  # noqa: F401 -- registers the artifact classes

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = os.path.join(run_dir, "metadata.sqlite")
    if not os.path.isfile(config.sqlite.filename_uri):
        raise SystemExit(f"--run {run_dir}: no metadata.sqlite (give the output folder of a local run)")
    store = metadata_store.MetadataStore(config)
    types_ = {t.id: t.name for t in store.get_execution_types()}
    executions = [e for e in store.get_executions() if types_[e.type_id].endswith("Trainer")]
    if not executions:
        raise SystemExit(f"--run {run_dir}: no Trainer execution in its ML Metadata")
    execution = max(executions, key=lambda e: e.id)
    properties = {k: v.string_value for k, v in execution.custom_properties.items()
                  if k in ("run_fn", "train_args", "eval_args", "custom_config")}
    events = [e for e in store.get_events_by_execution_ids([execution.id])
              if e.type == metadata_store_pb2.Event.INPUT]
    artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    artifact_types = {t.id: t for t in store.get_artifact_types()}
    inputs = {}
    for event in events:
        mlmd = artifacts[event.artifact_id]
        artifact = artifact_utils.deserialize_artifact(artifact_types[mlmd.type_id], mlmd)
        inputs.setdefault(event.path.steps[0].key, []).append(artifact)
    return inputs, properties


def _previous_export():
    """Patches this process to export as before: autograph on the signatures, Keras layer traces."""
    import tensorflow as tf
    import tf_keras

    import components.export_signatures as export_signatures

    def function(*args, **kwargs):
        kwargs.pop("autograph", None)  # tf.function's default: autograph on
        return tf.function(*args, **kwargs)

    with_autograph = types.SimpleNamespace(**{n: getattr(tf, n) for n in dir(tf) if not n.startswith("__")})
    with_autograph.function = function
    export_signatures.tf = with_autograph
    save = tf_keras.Model.save

    def save_with_traces(self, *args, **kwargs):
        kwargs.pop("save_traces", None)
        return save(self, *args, **kwargs)

    tf_keras.Model.save = save_with_traces


def _per_table_control():
    """Patches this process's sparsity target to read each table's state as before (below)."""
    from components.sparsity_target import SparsityTarget

    def table_states(self, fields):
        return [_previous_table_state(self, field) for field in fields]

    SparsityTarget.table_states = table_states


def _eager_control():
    """Patches this process's sparsity target to read and assign its variables one by one (eagerly)."""
    from components import sparsity_target
    init = sparsity_target._Variables.__init__

    def one_by_one(self, variables):
        init(self, variables)
        self._one_call = False

    sparsity_target._Variables.__init__ = one_by_one


def _autotuned_input():
    """Patches this process's Trainer to read its splits with tf.data's autotuning on."""
    from components import distributed

    distributed.without_autotuning = lambda dataset: dataset


def _autograph_input():
    """Patches this process's Trainer input so that autograph converts the functions tf.data maps."""
    import tensorflow as tf

    from components import training

    keep = tf.autograph.experimental.do_not_convert
    mapped = ("input_dataset.", "_record_batches.", "_tf_example_batches.", "_transformed_batches.")

    def do_not_convert(func=None):
        return func if func is not None and func.__qualname__.startswith(mapped) else keep(func)

    proxy = types.SimpleNamespace(**{n: getattr(tf, n) for n in dir(tf) if not n.startswith("__")})
    proxy.autograph = types.SimpleNamespace(experimental=types.SimpleNamespace(do_not_convert=do_not_convert))
    training.tf = proxy
    training.check_finite_features = training.check_finite_features.__wrapped__


def _previous_table_state(self, field: str):
    """``SparsityTarget.table_state`` before the regularizer scale was computed once per dtype."""
    import numpy as np

    from components.sparsity_target import TableState, _numpy, _parts, critical_l21
    optimizer = self.model.optimizer
    table = self._tables()[field]
    critical, zero, rows, fixed = [], 0, 0, 0
    row_bytes = 0
    for part in _parts(table):
        w = _numpy(part)
        z = optimizer.split_row_state(_numpy(optimizer.row_state(part)), w.ndim)["z"]
        flat_w, flat_z = w.reshape(w.shape[0], -1), z.reshape(z.shape[0], -1)
        nonzero = np.any(flat_w != 0, axis=1)
        stepped = np.any(flat_z != 0, axis=1)
        hyper = optimizer._hyperparameters(part.dtype)
        scale = float(np.asarray(optimizer._regularizer_scale(hyper)))
        critical.append(critical_l21(flat_z[stepped], optimizer.l1, scale))
        zero += int(np.count_nonzero(~nonzero))
        rows += w.shape[0]
        fixed += int(np.count_nonzero(nonzero & ~stepped))
        row_bytes = flat_w.shape[1] * w.dtype.itemsize
    return TableState(np.concatenate(critical) if critical else np.zeros(0), zero, rows, row_bytes, fixed)


def child(run_dir: str, variant: str, out: str) -> None:
    from tfx.components.trainer.executor import GenericExecutor
    from tfx.types import standard_artifacts

    inputs, properties = trainer_inputs(run_dir)
    if variant == "previous_export":
        _previous_export()
    elif variant == "per_table_control":
        _per_table_control()
    elif variant == "eager_control":
        _eager_control()
    elif variant == "autotuned_input":
        _autotuned_input()
    elif variant == "autograph_input":
        _autograph_input()
    model, model_run = standard_artifacts.Model(), standard_artifacts.ModelRun()
    model.uri, model_run.uri = os.path.join(out, "model"), os.path.join(out, "model_run")
    started = time.perf_counter()
    GenericExecutor().Do(inputs, {"model": [model], "model_run": [model_run]}, properties)
    seconds = time.perf_counter() - started
    with open(os.path.join(model.uri, "training.json")) as f:
        training = json.load(f)
    serving = os.path.join(model.uri, "Format-Serving")
    saved_bytes = sum(os.path.getsize(p) for p in glob.glob(os.path.join(serving, "**"), recursive=True)
                      if os.path.isfile(p))
    groups = (training.get("sparsity_target") or {}).get("groups") or {}
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump({"variant": variant, "do_s": round(seconds, 2), "fit_s": training["fit_seconds"],
                   "export_s": training["export_seconds"], "saved_model_bytes": saved_bytes,
                   "reached": {name: [g["reached_sparsity"], g["l21"]] for name, g in sorted(groups.items())},
                   "serving_dir": serving}, f)


def eval_examples(inputs, limit=2000):
    """Up to `limit` serialized raw tf.Examples of the run's eval split: ExampleGen's output, in the
    pipeline root beside Transform's (the Trainer's examples are either, by `materialize_transformed`)."""
    import tensorflow as tf
    examples_uri = inputs["examples"][0].uri
    root = re.split(f"{re.escape(os.sep)}(?:Transform|ClickLogExampleGen){re.escape(os.sep)}", examples_uri)[0]
    files = sorted(glob.glob(os.path.join(root, "ClickLogExampleGen", "examples", "*", "Split-eval", "*")))
    if not files:
        raise SystemExit(f"no eval split of ClickLogExampleGen under {root} to score the models with")
    records = []
    for path in files:
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP").take(limit - len(records)):
            records.append(record.numpy())
    return records


def max_score_difference(serving_dirs, examples):
    import numpy as np
    import tensorflow as tf
    scores = [tf.saved_model.load(d).signatures["serving_default"](examples=tf.constant(examples))["probability"]
              .numpy() for d in serving_dirs]
    return max(float(np.max(np.abs(s - scores[0]))) for s in scores)


# Variant: (what the current code does instead, the time it saves first: fit or the whole Do).
_GAINS = {
    "per_table_control": ("sparsity control once per dtype", "fit_s"),
    "eager_control": ("control's variables in one call", "fit_s"),
    "autotuned_input": ("input without tf.data autotuning", "fit_s"),
    "autograph_input": ("input functions without autograph", "do_s"),
}
_TIMES = {"fit_s": "fit", "do_s": "Trainer Do"}


def text(record):
    lines = [
        "The Trainer on one run's inputs (benchmarks/trainer_run_bench.py): the code as it is vs earlier "
        f"versions of its parts ({', '.join(v for v in record['median'] if v != 'current')}); TFX's Trainer "
        "executor, a new process each",
        f"{record['machine']}; run {record['run']}; 1-min load average {record['load_before']} before, "
        f"{record['load_after']} after; median of {record['repeats']} runs per variant, alternating",
        "",
        f"{'variant':<20}{'Trainer Do s':>14}{'fit s':>8}{'export s':>10}{'SavedModel bytes':>18}",
    ]
    m = record["median"]
    for variant in VARIANTS:
        if variant in m:
            row = m[variant]
            lines.append(f"{variant:<20}{row['do_s']:>14.1f}{row['fit_s']:>8.1f}{row['export_s']:>10.1f}"
                         f"{int(row['saved_model_bytes']):>18,}")
    lines.append("")
    if "previous_export" in m:
        lines.append(f"export: {m['previous_export']['export_s'] / m['current']['export_s']:.2f}x faster "
                     f"({m['previous_export']['export_s'] - m['current']['export_s']:.1f} s less); Trainer Do "
                     f"{m['previous_export']['do_s'] - m['current']['do_s']:.1f} s less")
    for variant, (label, first) in _GAINS.items():
        if variant in m:
            second = "do_s" if first == "fit_s" else "fit_s"
            less = {key: m[variant][key] - m["current"][key] for key in (first, second)}
            lines.append(f"{label}: {_TIMES[first]} {less[first]:.1f} s less "
                         f"({m[variant][first] / m['current'][first]:.2f}x); {_TIMES[second]} {less[second]:.1f} s less")
    for variant in m:
        fits = ", ".join(f"{r['fit_s']:.1f}" for r in record["runs"] if r.get("variant") == variant)
        lines.append(f"fit s of each run, {variant}: {fits}")
    reached = sorted({json.dumps(r.get("reached"), sort_keys=True) for r in record["runs"]})
    lines += [f"reached sparsity and l21 per target group, every run: {' | '.join(reached)}",
              f"serving_default scores of every run's export on {record['scored_examples']} eval examples: "
              f"max |difference| {record['max_score_difference']:.3g}"]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=False, help="output folder of a local pipeline run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="variants to run (current always runs)")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "trainer_run"))
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.run:
        parser.error("--run is required")
    if args.child:
        child(args.run, *args.child)
        return
    variants = [v for v in VARIANTS if v == "current" or v in args.variants]
    load_before = [round(x, 2) for x in os.getloadavg()]
    results = []
    with tempfile.TemporaryDirectory() as work:
        for repeat in range(args.repeats):
            for variant in (variants if repeat % 2 == 0 else variants[::-1]):
                out = os.path.join(work, f"{variant}-{repeat}")
                subprocess.run([sys.executable, "-m", "benchmarks.trainer_run_bench", "--run", args.run,
                                "--child", variant, out], check=True, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                with open(os.path.join(out, "result.json")) as f:
                    results.append(dict(json.load(f), repeat=repeat))
                print(f"{variant} repeat {repeat}: fit {results[-1]['fit_s']} s, export {results[-1]['export_s']} s",
                      flush=True)
        inputs, _ = trainer_inputs(args.run)
        examples = eval_examples(inputs)
        difference = max_score_difference([r["serving_dir"] for r in results], examples)
    median = {v: {k: statistics.median(r[k] for r in results if r["variant"] == v)
                  for k in ("do_s", "fit_s", "export_s", "saved_model_bytes")} for v in variants}
    record = {"machine": f"{os.cpu_count()} CPUs ({platform.machine()})", "run": args.run,
              "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
              "repeats": args.repeats, "runs": [{k: v for k, v in r.items() if k != "serving_dir"} for r in results],
              "median": median, "scored_examples": len(examples), "max_score_difference": difference}
    results_files.write(args.out, record, text(record))


if __name__ == "__main__":
    main()
