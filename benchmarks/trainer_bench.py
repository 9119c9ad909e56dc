"""Training throughput (examples/s) of the Trainer's models: DNN and DeepFM on 26-field data, Group
Adam vs tf_keras Adam, XLA on and off, at about 1e4 and 1e6 total embedding rows (16 cells).

    TF_USE_LEGACY_KERAS=1 PYTHONPATH=. .venv/bin/python -m benchmarks.trainer_bench [--quick] \
        [--out DIR] [--cells PATTERN,...] [--steps 600] [--steps-1e6 150] [--batch-size 256] \
        [--repeats 1] [--eager] [--steps-per-execution N]

Writes <out>/trainer_<device>.json (machine, load average before and after, TF version, every run
and every cell) and <out>/trainer_<device>.txt (the table and the ratios Group Adam / Adam and XLA
on / off at each size and model). ``--quick`` (a smoke test: a few steps, small data) writes
trainer_<device>_quick.json/.txt instead, so it never overwrites the committed results. A cell is
``<model>-<optimizer>-<xla_on|xla_off>-<1e4|1e6>``; ``--cells`` keeps the cells matching any of the
comma-separated fnmatch patterns (``--cells 'dnn-*-xla_off-1e4'``). ``--eager`` compiles with
``run_eagerly=True`` (no tracing): only for smoke tests of the harness, its numbers are not the Trainer's.

What a cell runs is the Trainer's own code (components/training.py, what run_fn uses): the model from
``components.models.build_model`` (26 categorical inputs that are already row ids, 13 float inputs,
embedding_dim 8, hidden units [64, 32]), the optimizer from ``training.make_optimizer`` (``optim.create``) with the
pipeline's defaults (learning rate 0.005, l1 = l2 = 0, l21 = 1e-3 for Group Adam), compiled as the
Trainer compiles (BinaryCrossentropy, AUC metric, ``jit_compile``, ``TrainerConfig.steps_per_execution``
steps per call into TensorFlow unless ``--steps-per-execution`` says otherwise), fitted with the Trainer's per-step
callback (stop on a non-finite loss; no TensorBoard callback, no validation). Only the input differs:
synthetic in-memory batches, cached before timing, instead of Transform's TFRecords, so the input
pipeline costs ~nothing (the batch dimension stays unknown when tracing, as in the Trainer). The
Trainer's real input pipeline is measured alone once per run (``input_child_main``:
``components.training.input_dataset``, TFX's data accessor over gzipped TFRecords of the same
examples; ``--skip-input`` skips it). The text ends with issue #17's targets, checked on the cells.

Data: 26 fields of equal table size (385 rows each = 10,010 rows; 38,462 each = 1,000,012 rows);
per field, Zipf(1.1) row ranks bounded at the table size and mapped to rows by a random permutation
(popular rows scattered over the table, as hashed ids are); 13 log1p(exponential) float features;
labels drawn from a planted logistic rule (per-row effects in 8 fields + 2 float features), so the
loss and AUC move. Batches of 256 (the pipeline default), one array of examples repeated.

Each cell is its own child process (``python -m benchmarks.trainer_bench --child ...``), so XLA and
graph caches, memory and thread pools do not leak between cells; cells go in an interleaved order
(per size, per model: the four optimizer x XLA cells back to back, and the order reversed on every
other repetition) so that load from other work biases no single column. In the child:

* warm-up fit: one epoch of ``--warmup-steps`` steps (tracing, XLA compilation, optimizer slots);
  its wall time is reported as ``first_epoch_s`` (the compile cost, plus the warm-up steps);
* timed fit: ``--epochs`` epochs of steps/epochs steps each, each epoch timed from on_epoch_begin to
  on_epoch_end (fit's set-up is not counted); examples/s = the median of the epochs' rates (robust to
  bursts of other load on a shared machine; ``examples_per_s_mean``, all timed examples / their time,
  is in the JSON too, and the slowest and fastest epochs are in the table).

Peak RSS is the child's ru_maxrss (the whole process: TF, TFX imports, data, model, optimizer);
``rss_before_model_mib`` (psutil, after imports and data) shows what the model and training add.
The machine may be shared: the 1-minute load average is recorded before and after each cell.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import subprocess
import sys
import time
from typing import Dict, List, Optional

from benchmarks import results_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODELS = ("dnn", "deepfm")
OPTIMIZERS = ("group_adam", "adam")
XLA = ("xla_off", "xla_on")
SIZES = {"1e4": 385, "1e6": 38_462}  # rows per field; x 26 fields = 10,010 and 1,000,012 rows
FIELDS, INT_FEATURES = 26, 13
CAT_FIELDS = [f"C{i}" for i in range(1, FIELDS + 1)]
INT_FIELDS = [f"I{i}" for i in range(1, INT_FEATURES + 1)]
ZIPF_EXPONENT = 1.1
EMBEDDING_DIM, HIDDEN_UNITS = 8, [64, 32]
TRAINER_CONFIG = {"learning_rate": 0.005, "l1": 0.0, "l2": 0.0, "l21": 1e-3}  # pipelines/config.py


def cell_name(model: str, optimizer: str, xla: str, size: str) -> str:
    return f"{model}-{optimizer}-{xla}-{size}"


def all_cells() -> List[Dict[str, str]]:
    return [{"model": m, "optimizer": o, "xla": x, "size": s}
            for s in SIZES for m in MODELS for x in XLA for o in OPTIMIZERS]


# ------------------------------------------------------------------------------------------------
# child: one cell
# ------------------------------------------------------------------------------------------------
def _zipf_rows(rng, n: int, rows: int):
    import numpy as np

    weights = np.arange(1, rows + 1, dtype=np.float64) ** -ZIPF_EXPONENT
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ranks = np.minimum(np.searchsorted(cdf, rng.random_sample(n)), rows - 1)
    return rng.permutation(rows)[ranks].astype(np.int64)


def synthetic_data(examples: int, rows_per_field: int, seed: int = 0):
    """(features: name -> array, labels, mean label), from the planted rule in the module docstring."""
    import numpy as np

    rng = np.random.RandomState(seed)
    features = {f: np.log1p(rng.exponential(10.0, examples)).astype(np.float32) for f in INT_FIELDS}
    logit = -1.0 + 0.4 * (features["I1"] - features["I1"].mean()) - 0.3 * (features["I2"] - features["I2"].mean())
    for i, f in enumerate(CAT_FIELDS):
        features[f] = _zipf_rows(rng, examples, rows_per_field)
        if i < 8:
            effect = rng.normal(0.0, 0.7, rows_per_field)
            logit = logit + effect[features[f]]
    labels = (rng.random_sample(examples) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return features, labels, float(labels.mean())


def child_main(args) -> None:
    import dataclasses
    import resource
    import statistics

    import psutil

    import tensorflow as tf
    import tf_keras as keras

    from components import models, training
    from components.trainer_config import TrainerConfig

    keras.utils.set_random_seed(0)
    rows_per_field = SIZES[args.size]
    total_steps = args.warmup_steps + args.steps
    examples = min(args.examples, total_steps * args.batch_size) // args.batch_size * args.batch_size
    features, labels, positive_rate = synthetic_data(examples, rows_per_field)
    # Batched once and cached before timing: slicing 39 features example by example and batching
    # them again costs ~2.4 ms of CPU a batch, as much as a training step on these 2 cores. The batch
    # dimension stays unknown when tracing, as in the Trainer (whose last batch is partial).
    batches = tf.data.Dataset.from_tensor_slices((features, labels)).batch(args.batch_size).cache()
    for _ in batches:
        pass
    dataset = batches.repeat().prefetch(tf.data.AUTOTUNE)
    rss_before_model = psutil.Process().memory_info().rss

    table_rows = {f: rows_per_field for f in CAT_FIELDS}
    model = models.build_model(args.model, INT_FIELDS, CAT_FIELDS, table_rows,
                               embedding_dim=EMBEDDING_DIM, hidden_units=HIDDEN_UNITS)
    config = TrainerConfig(**TRAINER_CONFIG, optimizer=args.optimizer)
    if args.steps_per_execution:  # else the Trainer's default
        config = dataclasses.replace(config, steps_per_execution=args.steps_per_execution)
    training.compile_model(model, config, jit_compile=args.xla == "xla_on", run_eagerly=args.eager or None)

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: List[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._started)

    callbacks = [training.StopOnNonFiniteLoss()]
    started = time.perf_counter()
    warm = model.fit(dataset, epochs=1, steps_per_epoch=args.warmup_steps, callbacks=callbacks, verbose=0)
    first_epoch_s = time.perf_counter() - started
    timer = EpochTimer()
    steps_per_epoch = max(1, args.steps // args.epochs)
    history = model.fit(dataset, epochs=args.epochs, steps_per_epoch=steps_per_epoch,
                        callbacks=callbacks + [timer], verbose=0)
    timed_steps = steps_per_epoch * args.epochs
    timed_s = sum(timer.seconds)
    per_epoch = [steps_per_epoch * args.batch_size / s for s in timer.seconds]
    median_rate = statistics.median(per_epoch)
    result = {
        "tensorflow": tf.__version__,
        "device": "gpu" if tf.config.list_physical_devices("GPU") else "cpu",
        "rows_per_field": rows_per_field,
        "total_rows": rows_per_field * FIELDS,
        "parameters": int(model.count_params()),
        "examples_in_memory": examples,
        "positive_rate": round(positive_rate, 4),
        "warmup_steps": args.warmup_steps,
        "first_epoch_s": round(first_epoch_s, 3),
        # the first epoch less its steps at the timed rate: tracing (AutoGraph), XLA compilation, slots
        "compile_s_est": round(first_epoch_s - args.warmup_steps * timed_s / timed_steps, 3),
        "timed_steps": timed_steps,
        "timed_s": round(timed_s, 3),
        "examples_per_s": median_rate,  # median over the timed epochs: robust to bursts of other load
        "ms_per_step": 1e3 * args.batch_size / median_rate,
        "examples_per_s_mean": timed_steps * args.batch_size / timed_s,  # all timed steps / their time
        "epoch_examples_per_s": [round(x, 1) for x in per_epoch],
        "loss_first": float(warm.history["loss"][0]),
        "loss_last": float(history.history["loss"][-1]),
        "auc_last": float(history.history["auc"][-1]),
        "rss_before_model_mib": round(rss_before_model / 2 ** 20, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print("RESULT " + json.dumps(result), flush=True)


def _write_input_examples(split: str, examples: int, files: int):
    """The cells' examples (26 ids + 13 floats + label) as Transform writes them: gzipped TFRecords
    of tf.Examples in `files` shards under `split`; returns their schema."""
    import tensorflow as tf
    from tensorflow_transform.tf_metadata import schema_utils

    features, labels, _ = synthetic_data(examples, SIZES["1e4"])
    feature_spec = {f: tf.io.FixedLenFeature([], tf.float32) for f in INT_FIELDS}
    feature_spec.update({f: tf.io.FixedLenFeature([], tf.int64) for f in CAT_FIELDS + ["label"]})
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    for shard in range(files):
        path = os.path.join(split, f"transformed_examples-{shard:05d}-of-{files:05d}.gz")
        with tf.io.TFRecordWriter(path, options) as w:
            for i in range(shard, examples, files):
                feature = {f: tf.train.Feature(float_list=tf.train.FloatList(value=[features[f][i]]))
                           for f in INT_FIELDS}
                feature.update({f: tf.train.Feature(int64_list=tf.train.Int64List(value=[features[f][i]]))
                                for f in CAT_FIELDS})
                feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(labels[i])]))
                w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return schema_utils.schema_from_feature_spec(feature_spec)


def _fit_with_each_reader(args, readers) -> Dict:
    """The Trainer's model for --transform-output (its vocabulary; the criteo spec, rows relative to
    the OOV row, batch --batch-size) fitted --fit-steps steps per optimizer with each reader's batches
    after a warm-up epoch of 20 steps: {optimizer: {reader: examples/s}}."""
    import tensorflow as tf
    import tensorflow_transform as tft
    import tf_keras as keras

    from components import training
    from components.dataset_spec import load_spec
    from components.trainer_config import TrainerConfig
    from components.vocabulary import FieldVocabulary

    spec = load_spec("criteo")
    vocabulary = FieldVocabulary(spec, tft.TFTransformOutput(args.transform_output[1]))
    fits = {}
    for optimizer in ("group_adam", "adam"):
        fits[optimizer] = {}
        for name, reader in readers.items():
            config = TrainerConfig(optimizer=optimizer, batch_size=args.batch_size, rows_relative_to_oov=True)
            keras.utils.set_random_seed(config.seed)
            model = training.build_model(config, spec, vocabulary)
            training.compile_model(model, config, jit_compile=False)
            batches = reader().repeat()
            model.fit(batches, steps_per_epoch=20, epochs=1, verbose=0)
            started = time.perf_counter()
            model.fit(batches, steps_per_epoch=args.fit_steps, epochs=1, verbose=0)
            fits[optimizer][name] = args.fit_steps * args.batch_size / (time.perf_counter() - started)
            print(f"fit {optimizer} {name}: {fits[optimizer][name]:.0f} examples/s", file=sys.stderr, flush=True)
            del model
            keras.backend.clear_session()
    return fits


def input_child_main(args) -> None:
    """The Trainer's input pipeline alone: `components.training.input_dataset` against tfx_bsl's
    reader (TFX's data accessor, what it used before) over the same gzipped TFRecords of transformed
    examples, shuffled, batch --batch-size, with the same finiteness check; examples/s of passes
    read inside a tf.function as fit reads them, the two readers alternating. The files: the
    cells' examples (two shards, as Transform writes them), or --transform-output's train split
    (an existing Transform output: its transformed_examples/<n>/Split-train and transform_graph/<n>
    with the same <n> or the given ones) read for at most --input-batches batches per pass."""
    import statistics
    import tempfile

    import tensorflow as tf
    import tensorflow_transform as tft
    from tfx.components.trainer import fn_args_utils
    from tfx.components.util import tfxio_utils
    from tfx.types import standard_artifacts

    from components import training

    def accessor_for(root):
        artifact = standard_artifacts.Examples()
        artifact.uri = root
        artifact.split_names = '["train"]'
        # What TFX's Trainer hands run_fn as fn_args.data_accessor (fn_args_utils.get_data_accessor).
        return fn_args_utils.DataAccessor(
            tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact([artifact], []),
            record_batch_factory=None, data_view_decode_fn=None)

    with tempfile.TemporaryDirectory() as temp:
        if args.transform_output:
            examples_root, graph = args.transform_output
            schema = tft.TFTransformOutput(graph).transformed_metadata.schema
            split = os.path.join(examples_root, "Split-train")
        else:
            examples_root = temp
            split = os.path.join(temp, "Split-train")
            os.makedirs(split)
            schema = _write_input_examples(split, args.examples // args.batch_size * args.batch_size, files=2)
        accessor = accessor_for(examples_root)
        pattern = [os.path.join(split, "*")]

        def tfx_bsl_reader():
            return accessor.tf_dataset_factory(pattern, training.tfxio.TensorFlowDatasetOptions(
                batch_size=args.batch_size, label_key=training.LABEL_KEY, num_epochs=1, shuffle=True,
                shuffle_seed=0, drop_final_batch=False), schema).map(
                    training.check_finite_features, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

        readers = {
            "input_dataset": lambda: training.input_dataset(pattern, accessor, schema, args.batch_size, seed=0,
                                                            shuffle=True),
            "tfx_bsl_reader": tfx_bsl_reader,
        }
        limit = args.input_batches or -1

        def read_all(dataset):
            @tf.function
            def count_examples():
                count = tf.constant(0, tf.int64)
                for _, batch_labels in dataset.take(limit):
                    count += tf.size(batch_labels, out_type=tf.int64)
                return count
            return count_examples

        passes = {name: [] for name in readers}
        counts = {}
        for turn in range(3):  # the first pass of each also traces
            for name in (list(readers) if turn % 2 == 0 else list(readers)[::-1]):
                read = read_all(readers[name]())
                started = time.perf_counter()
                counts[name] = int(read())
                passes[name].append(counts[name] / (time.perf_counter() - started))
        fits = _fit_with_each_reader(args, readers) if args.fit_steps else None
    rates = {name: statistics.median(values[1:]) for name, values in passes.items()}
    files = (f"Transform output {examples_root}, train split" if args.transform_output
             else "the cells' examples in 2 gzipped shards")
    print("RESULT " + json.dumps({
        "fits": fits,
        "examples": counts["input_dataset"], "files": files,
        "passes_examples_per_s": {name: [round(r, 1) for r in values] for name, values in passes.items()},
        "examples_per_s": rates["input_dataset"], "tfx_bsl_reader_examples_per_s": rates["tfx_bsl_reader"],
        "speedup_over_tfx_bsl_reader": rates["input_dataset"] / rates["tfx_bsl_reader"]}), flush=True)


# ------------------------------------------------------------------------------------------------
# parent: cells in child processes, report
# ------------------------------------------------------------------------------------------------
def run_cell(cell: Dict[str, str], steps: int, args, timeout_s: float) -> Dict:
    cmd = [sys.executable, "-m", "benchmarks.trainer_bench", "--child",
           "--model", cell["model"], "--optimizer", cell["optimizer"], "--xla", cell["xla"],
           "--size", cell["size"], "--steps", str(steps), "--warmup-steps", str(args.warmup_steps),
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           "--examples", str(args.examples)] + (["--eager"] if args.eager else []) + \
        (["--steps-per-execution", str(args.steps_per_execution)] if args.steps_per_execution else [])
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    run = dict(cell, cell=cell_name(**cell), load_average_before=round(os.getloadavg()[0], 2))
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        run["error"] = f"timed out after {timeout_s:.0f} s"
        return run
    run["process_wall_s"] = round(time.perf_counter() - started, 1)
    run["load_average_after"] = round(os.getloadavg()[0], 2)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        run["error"] = f"exit {proc.returncode}: {' | '.join(tail)}"
        return run
    run.update(json.loads(line[len("RESULT "):]))
    return run


def run_input_pipeline(args) -> Dict:
    """The input-pipeline child's result (or its error), with the load around it."""
    cmd = [sys.executable, "-m", "benchmarks.trainer_bench", "--input-child", "--batch-size",
           str(args.batch_size), "--examples", str(args.examples), "--input-batches", str(args.input_batches),
           "--fit-steps", str(args.fit_steps)]
    if args.transform_output:
        cmd += ["--transform-output", *args.transform_output]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    out = {"load_average_before": round(os.getloadavg()[0], 2)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    out["load_average_after"] = round(os.getloadavg()[0], 2)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        out["error"] = f"exit {proc.returncode}: {' | '.join((proc.stderr or proc.stdout).strip().splitlines()[-3:])}"
    else:
        out.update(json.loads(line[len("RESULT "):]))
    print(f"input pipeline: {out.get('examples_per_s', out.get('error'))}", flush=True)
    return out


def format_input_pipeline(pipeline: Dict, batch_size: int) -> List[str]:
    """The input pipeline's lines: both readers' examples/s and their ratio."""
    if "examples_per_s" not in pipeline:
        return [f"Trainer input pipeline alone: ERROR {pipeline['error']}"]
    if "tfx_bsl_reader_examples_per_s" not in pipeline:  # a record from before both readers were measured
        return ["Trainer input pipeline alone (components.training.input_dataset: TFX data accessor over "
                "gzipped TFRecords of the cells' transformed examples, shuffled, batch "
                f"{batch_size}; median of 2 passes after a first): {pipeline['examples_per_s']:.0f} examples/s"]
    return [
        f"Trainer input pipeline alone ({pipeline['files']}; {pipeline['examples']:,d} examples a pass, "
        f"shuffled, batch {batch_size}, float features checked finite; median of 2 passes after a first, "
        "the readers alternating):",
        f"  components.training.input_dataset (files read in blocks of records)  "
        f"{pipeline['examples_per_s']:>10.0f} examples/s",
        f"  tfx_bsl's reader (TFX data accessor, records interleaved one by one)  "
        f"{pipeline['tfx_bsl_reader_examples_per_s']:>10.0f} examples/s",
        f"  input_dataset / tfx_bsl's reader: {pipeline['speedup_over_tfx_bsl_reader']:.2f}x",
    ] + [line for optimizer, by_reader in (pipeline.get("fits") or {}).items() for line in [
        f"  the Trainer's model with {optimizer} (model.fit, examples/s): input_dataset "
        f"{by_reader['input_dataset']:.0f}, tfx_bsl's reader {by_reader['tfx_bsl_reader']:.0f}, "
        f"{by_reader['input_dataset'] / by_reader['tfx_bsl_reader']:.2f}x"]]


# Issue #17's trainer targets: Group Adam / Adam examples/s at each size, DNN examples/s at 1e6 rows
# (twice the 17k the README quoted before), the first epoch's overhead.
TARGETS = {"group_over_adam": {"1e4": 1.0, "1e6": 10.0}, "dnn_1e6_examples_per_s": 34_000,
           "compile_s": 10.0}


def targets(cells: Dict[str, Dict], ratios_: Dict[str, Dict[str, float]]) -> List[Dict]:
    """Each target of TARGETS checked on this run's cells: {name, value, bound, met}."""
    out = []
    for key, value in ratios_["group_adam_over_adam"].items():
        bound = TARGETS["group_over_adam"][key.rsplit("-", 1)[1]]
        out.append({"name": f"Group Adam / Adam examples/s, {key}", "value": value, "bound": f">= {bound}",
                    "met": value >= bound})
    for xla in XLA:
        name = cell_name("dnn", "group_adam", xla, "1e6")
        if name in cells:
            value = cells[name]["examples_per_s"]
            out.append({"name": f"examples/s, {name}", "value": value,
                        "bound": f">= {TARGETS['dnn_1e6_examples_per_s']}",
                        "met": value >= TARGETS["dnn_1e6_examples_per_s"]})
    for name, cell in cells.items():
        value = cell["compile_s_est"]
        out.append({"name": f"first-epoch overhead s, {name}", "value": value,
                    "bound": f"<= {TARGETS['compile_s']}", "met": value <= TARGETS["compile_s"]})
    return out


def summarize(runs: List[Dict]) -> Dict[str, Dict]:
    """cell name -> the cell's numbers: the median over its successful runs (per field)."""
    import statistics

    cells: Dict[str, Dict] = {}
    for cell in all_cells():
        name = cell_name(**cell)
        ok = [r for r in runs if r["cell"] == name and "error" not in r]
        if not ok:
            continue
        cells[name] = dict(cell, runs=len(ok), total_rows=ok[0]["total_rows"],
                           parameters=ok[0]["parameters"], timed_steps=ok[0]["timed_steps"],
                           examples_per_s=statistics.median(r["examples_per_s"] for r in ok),
                           ms_per_step=statistics.median(r["ms_per_step"] for r in ok),
                           first_epoch_s=statistics.median(r["first_epoch_s"] for r in ok),
                           compile_s_est=statistics.median(r["compile_s_est"] for r in ok),
                           epoch_min=min(min(r["epoch_examples_per_s"]) for r in ok),
                           epoch_max=max(max(r["epoch_examples_per_s"]) for r in ok),
                           load_average=statistics.mean(
                               (r["load_average_before"] + r["load_average_after"]) / 2 for r in ok),
                           peak_rss_mib=max(r["peak_rss_mib"] for r in ok),
                           loss_last=statistics.median(r["loss_last"] for r in ok),
                           auc_last=statistics.median(r["auc_last"] for r in ok))
    return cells


def ratios(cells: Dict[str, Dict]) -> Dict[str, Dict[str, float]]:
    """Throughput ratios within the run: Group Adam / Adam (per model, XLA, size), XLA on / off
    (per model, optimizer, size) and 1e6 / 1e4 rows (per model, optimizer, XLA)."""

    def ratio(a: str, b: str) -> Optional[float]:
        if a in cells and b in cells:
            return cells[a]["examples_per_s"] / cells[b]["examples_per_s"]
        return None

    out: Dict[str, Dict[str, float]] = {"group_adam_over_adam": {}, "xla_on_over_off": {},
                                        "1e6_over_1e4": {}}
    for size in SIZES:
        for model in MODELS:
            for xla in XLA:
                value = ratio(cell_name(model, "group_adam", xla, size), cell_name(model, "adam", xla, size))
                if value is not None:
                    out["group_adam_over_adam"][f"{model}-{xla}-{size}"] = value
            for opt in OPTIMIZERS:
                value = ratio(cell_name(model, opt, "xla_on", size), cell_name(model, opt, "xla_off", size))
                if value is not None:
                    out["xla_on_over_off"][f"{model}-{opt}-{size}"] = value
    for model in MODELS:
        for opt in OPTIMIZERS:
            for xla in XLA:
                value = ratio(cell_name(model, opt, xla, "1e6"), cell_name(model, opt, xla, "1e4"))
                if value is not None:
                    out["1e6_over_1e4"][f"{model}-{opt}-{xla}"] = value
    return out


def format_text(record: Dict) -> str:
    machine = record["machine"]
    cells = record["cells"]
    lines = [
        "Trainer throughput (benchmarks/trainer_bench.py): model.fit examples/s, synthetic 26-field data",
        f"{machine['cpus']} CPUs ({machine['machine']}), TF {machine['tensorflow']}; 1-min load average "
        f"{machine['load_average_before']} before, {machine['load_average_after']} after "
        f"(per-cell 1-min load {machine['cell_load_min']:.2f}..{machine['cell_load_max']:.2f}); shared machine: "
        "compare cells within this run",
        f"batch {record['batch_size']}, embedding_dim {EMBEDDING_DIM}, hidden {HIDDEN_UNITS}, warm-up "
        f"{record['warmup_steps']} steps (not timed), timed steps {record['steps']}, "
        f"{record.get('steps_per_execution', 1)} step(s) per call into TensorFlow (steps_per_execution), "
        f"{record['repeats']} run(s) per cell (median); {len(record['runs'])} child processes in "
        f"{record['wall_s'] / 60:.1f} min"
        + ("; QUICK" if record["quick"] else "") + ("; EAGER (run_eagerly, not the Trainer's numbers)"
                                                    if record["eager"] else ""),
        "examples/s = median of the timed epochs' rates (min..max: the slowest and fastest epoch); first epoch s"
        " = the warm-up fit (tracing, XLA compilation, optimizer slots, warm-up steps); compile s = first epoch"
        " s less the warm-up steps at the mean timed rate; peak MiB = the child process's max RSS; load = the"
        " 1-min load average around the cell",
        "",
        f"{'cell':<30}{'rows':>11}{'examples/s':>12}{'epochs min..max':>17}{'ms/step':>9}"
        f"{'first epoch s':>15}{'compile s':>11}{'peak MiB':>10}{'auc':>7}{'load':>6}",
    ]
    lines.append("-" * len(lines[-1]))
    for cell in all_cells():
        name = cell_name(**cell)
        if name not in cells:
            lines.append(f"{name:<30}{'-':>11}{'(not run)':>12}")
            continue
        c = cells[name]
        spread = f"{c['epoch_min']:.0f}..{c['epoch_max']:.0f}"
        lines.append(f"{name:<30}{c['total_rows']:>11,d}{c['examples_per_s']:>12.1f}{spread:>17}"
                     f"{c['ms_per_step']:>9.2f}{c['first_epoch_s']:>15.1f}{c['compile_s_est']:>11.1f}"
                     f"{c['peak_rss_mib']:>10.0f}{c['auc_last']:>7.3f}{c['load_average']:>6.1f}")
    titles = {"group_adam_over_adam": "Group Adam / Adam throughput",
              "xla_on_over_off": "XLA on / XLA off throughput",
              "1e6_over_1e4": "1e6 rows / 1e4 rows throughput"}
    for kind, title in titles.items():
        lines += ["", title]
        for key, value in record["ratios"][kind].items():
            lines.append(f"  {key:<28}{value:>8.2f}")
    pipeline = record.get("input_pipeline")
    if pipeline:
        lines += [""] + format_input_pipeline(pipeline, record["batch_size"])
    if record.get("targets"):
        lines += ["", "targets:"] + [
            f"  {t['name']}: {t['value']:.2f} ({t['bound']}: {'met' if t['met'] else 'NOT met'})"
            for t in record["targets"]]
    errors = [r for r in record["runs"] if "error" in r]
    if errors:
        lines += ["", "errors"] + [f"  {r['cell']}: {r['error']}" for r in errors]
    return "\n".join(lines) + "\n"


def format_comparison(labelled: Dict[str, List[Dict]], commands: List[str], note: str = "") -> str:
    """Two or more code revisions' runs side by side: per cell, each label's examples/s and first
    epoch (median over its runs), and the last label over the first."""
    import statistics
    labels = list(labelled)
    first, last = labels[0], labels[-1]
    loads = [r[k] for recs in labelled.values() for rec in recs for r in rec["runs"]
             for k in ("load_average_before", "load_average_after") if k in r]
    lines = [f"Trainer throughput, {' vs '.join(labels)} (benchmarks/trainer_bench.py --compare): the same "
             f"cells run by each revision's own benchmark, runs interleaved ({', '.join(f'{l}: {len(v)} run(s)' for l, v in labelled.items())}); "
             f"per-cell 1-min load {min(loads):.2f}..{max(loads):.2f}",
             "Commands:"] + [f"  {c}" for c in commands] + ([note] if note else []) + [
             "examples/s and first epoch s: median over the label's runs; ratio = "
             f"{last} / {first}", ""]
    width = max(16, max(len(l) for l in labels) + 11)
    head = f"{'cell':<30}" + "".join(f"{l + ' ex/s':>{width}}" for l in labels) + f"{'ratio':>8}" + \
        "".join(f"{l + ' 1st ep s':>{width}}" for l in labels) + f"{'ratio':>8}"
    lines += [head, "-" * len(head)]
    cells = list(labelled[first][0]["cells"])
    ratios_speed, ratios_first, spreads = [], [], []
    for name in cells:
        speed, first_epoch = {}, {}
        for label, recs in labelled.items():
            vals = [rec["cells"][name] for rec in recs if rec["cells"].get(name, {}).get("examples_per_s")]
            if vals:
                speed[label] = [v["examples_per_s"] for v in vals]
                first_epoch[label] = statistics.median(v["first_epoch_s"] for v in vals)
        if len(speed) < len(labels):
            continue
        median = {l: statistics.median(v) for l, v in speed.items()}
        r1, r2 = median[last] / median[first], first_epoch[last] / first_epoch[first]
        ratios_speed.append(r1)
        ratios_first.append(r2)
        spreads.append(f"{name:<30}" + "".join(f"  {l}: {min(v):.0f}..{max(v):.0f}" for l, v in speed.items()))
        lines.append(f"{name:<30}" + "".join(f"{median[l]:>{width}.0f}" for l in labels) + f"{r1:>8.2f}"
                     + "".join(f"{first_epoch[l]:>{width}.1f}" for l in labels) + f"{r2:>8.2f}")
    lines += ["", "examples/s, slowest..fastest run of each label:"] + spreads
    if ratios_speed:
        lines += ["", f"{last}/{first} examples/s: geometric mean {statistics.geometric_mean(ratios_speed):.2f}, "
                  f"min {min(ratios_speed):.2f}, max {max(ratios_speed):.2f}; first epoch s: geometric mean "
                  f"{statistics.geometric_mean(ratios_first):.2f}, max {max(ratios_first):.2f}"]
    return "\n".join(lines) + "\n"


def write_input_only(args, argv) -> None:
    """--input-only: the input pipeline's record and text (trainer_input[_quick].json/.txt)."""
    load_before = [round(x, 2) for x in os.getloadavg()]
    pipeline = run_input_pipeline(args)
    record = {"benchmark": "trainer_bench --input-only",
              "command": " ".join(["python -m benchmarks.trainer_bench"] + (argv if argv is not None else sys.argv[1:])),
              "machine": {"cpus": os.cpu_count(), "machine": platform.machine(),
                          "load_average_before": load_before,
                          "load_average_after": [round(x, 2) for x in os.getloadavg()]},
              "batch_size": args.batch_size, "input_pipeline": pipeline}
    text = "\n".join([f"Command: {record['command']}",
                      f"{os.cpu_count()} CPUs ({platform.machine()}); 1-min load average {load_before[0]} before, "
                      f"{record['machine']['load_average_after'][0]} after", ""]
                     + format_input_pipeline(pipeline, args.batch_size)) + "\n"
    stem = "trainer_input" + ("_transform_output" if args.transform_output else "") + ("_quick" if args.quick else "")
    results_files.write(os.path.join(args.out, stem), record, text)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 warm-up + 4 timed steps")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"), help="output folder")
    parser.add_argument("--cells", default="*", help="comma-separated fnmatch patterns of cell names")
    parser.add_argument("--steps", type=int, default=600, help="timed steps per cell at 1e4 rows")
    parser.add_argument("--steps-1e6", type=int, default=150, help="timed steps per cell at 1e6 rows")
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6, help="the timed steps are split into this many epochs")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--examples", type=int, default=65_536, help="at most this many examples in memory")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--eager", action="store_true",
                        help="compile with run_eagerly=True: no tracing, so a cell starts in seconds (for "
                             "smoke tests of the harness; its numbers are not the Trainer's)")
    parser.add_argument("--steps-per-execution", type=int, default=0,
                        help="training steps per call into TensorFlow (0: the Trainer's default, "
                             "TrainerConfig.steps_per_execution)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per cell")
    parser.add_argument("--compare", nargs="+", metavar="LABEL=JSON[,JSON...]",
                        help="no training: write --out (a .txt path) comparing the runs of several revisions")
    parser.add_argument("--note", default="", help="with --compare: a line on how the runs were made")
    # child mode
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-input", action="store_true", help="do not measure the input pipeline")
    parser.add_argument("--input-only", action="store_true",
                        help="only the input pipeline: writes <out>/trainer_input.json/.txt")
    parser.add_argument("--transform-output", nargs=2, metavar=("EXAMPLES_DIR", "TRANSFORM_GRAPH_DIR"),
                        help="measure the input pipeline on this Transform output's train split "
                             "(EXAMPLES_DIR/Split-train) instead of the cells' examples")
    parser.add_argument("--fit-steps", type=int, default=0,
                        help="with --transform-output: also fit the Trainer's model (Group Adam, then Adam) "
                             "this many steps with each reader")
    parser.add_argument("--input-batches", type=int, default=0,
                        help="at most this many batches per input-pipeline pass (0: all)")
    parser.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, help=argparse.SUPPRESS)
    parser.add_argument("--xla", choices=XLA, help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=list(SIZES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args)
        return
    if args.input_child:
        input_child_main(args)
        return
    if args.compare:
        labelled, commands = {}, []
        for item in args.compare:
            label, _, paths = item.partition("=")
            labelled[label] = []
            for path in paths.split(","):
                with open(path) as f:
                    labelled[label].append(json.load(f))
        text = format_comparison(labelled, [" ".join(["python -m benchmarks.trainer_bench"] + (argv or sys.argv[1:]))],
                                 args.note)
        print(text)
        with open(args.out, "w") as f:
            f.write(text)
        return
    if args.quick:
        args.steps, args.steps_1e6, args.warmup_steps, args.epochs, args.examples = 4, 4, 2, 2, 2048
    if args.input_only:
        write_input_only(args, argv)
        return
    steps_by_size = {"1e4": args.steps, "1e6": args.steps_1e6}

    patterns = [p.strip() for p in args.cells.split(",") if p.strip()]
    selected = [c for c in all_cells() if any(fnmatch.fnmatchcase(cell_name(**c), p) for p in patterns)]
    if not selected:
        raise SystemExit(f"error: no cell matches {args.cells!r}; cells are e.g. {cell_name(**all_cells()[0])}")
    from components.trainer_config import TrainerConfig  # no TensorFlow in this process
    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    runs: List[Dict] = []
    for repeat in range(args.repeats):
        order = selected if repeat % 2 == 0 else selected[::-1]
        for cell in order:
            run = run_cell(cell, steps_by_size[cell["size"]], args, args.timeout)
            run["repeat"] = repeat
            runs.append(run)
            if "error" in run:
                print(f"{run['cell']:<30} ERROR {run['error']}", flush=True)
            else:
                print(f"{run['cell']:<30} {run['examples_per_s']:>10.1f} ex/s  first epoch {run['first_epoch_s']:.1f} s"
                      f"  peak {run['peak_rss_mib']:.0f} MiB  load {run['load_average_before']}"
                      f"->{run['load_average_after']}  wall {run['process_wall_s']} s", flush=True)
    input_pipeline = None if args.skip_input else run_input_pipeline(args)
    ok = [r for r in runs if "error" not in r]
    cell_loads = [r[k] for r in runs for k in ("load_average_before", "load_average_after") if k in r]
    device = ok[0]["device"] if ok else "cpu"
    record = {
        "benchmark": "trainer_bench",
        "device": device,
        "machine": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                    "tensorflow": ok[0]["tensorflow"] if ok else None,
                    "load_average_before": load_before,
                    "load_average_after": [round(x, 2) for x in os.getloadavg()],
                    "cell_load_min": min(cell_loads), "cell_load_max": max(cell_loads)},
        "wall_s": round(time.perf_counter() - started, 1),
        "quick": args.quick,
        "eager": args.eager,
        "steps_per_execution": args.steps_per_execution or TrainerConfig().steps_per_execution,
        "batch_size": args.batch_size,
        "steps": steps_by_size,
        "warmup_steps": args.warmup_steps,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "fields": FIELDS,
        "int_features": INT_FEATURES,
        "rows_per_field": SIZES,
        "embedding_dim": EMBEDDING_DIM,
        "hidden_units": HIDDEN_UNITS,
        "trainer_config": TRAINER_CONFIG,
        "zipf_exponent": ZIPF_EXPONENT,
        "unit": "examples per second (median over the timed epochs; median over runs)",
        "runs": runs,
        "input_pipeline": input_pipeline,
    }
    record["cells"] = summarize(runs)
    record["ratios"] = ratios(record["cells"])
    record["targets"] = targets(record["cells"], record["ratios"])
    stem = f"trainer_{device}" + ("_quick" if args.quick else "")
    results_files.write(os.path.join(args.out, stem), record, format_text(record))
    if not ok or len(ok) < len(runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
