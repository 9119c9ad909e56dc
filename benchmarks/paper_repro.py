"""Reproduce the paper's claim: Group Adam vs Adam + magnitude pruning at equal embedding-row sparsity.

Yue et al., "Adaptive Optimizers with Sparse Group Lasso for Neural Networks in CTR Prediction"
(ECML PKDD 2021, arXiv 2107.14432) claim that the Group optimizers reach a given feature (embedding
row) sparsity at a better AUC than the dense optimizer followed by pruning. This runner measures it,
for each dataset (the real Criteo and Avazu samples in ../shared/data/, and a generated Criteo-layout
set with planted features) and each model (DNN, DeepFM):

* ``adam``           -- plain Adam (no sparsity).
* ``adam_rowprune``  -- the same Adam models with the embedding rows of smallest l2 norm set to zero,
  one global threshold over all tables, at exactly the sparsity that each Group run of the same seed
  reached (paired); evaluated without fine-tuning.
* ``tfmot``          -- TF Model Optimization's ``prune_low_magnitude`` on every Embedding layer,
  weight-level (tfmot 0.8.0's ``block_size=(1, d)``, whole rows, fails on Embedding layers), a
  polynomial schedule from 0 to the target over the first 70% of the steps, the target being the
  mean sparsity Group Adam reached at that lambda (tfmot applies it per table, not globally). Its
  row sparsity is measured like the others' and is far below the target.
* ``group_adam`` / ``group_adagrad`` -- the project's optimizers over an l21 grid.

It reuses the project's code end to end: ExampleGen's line parser (``LineParser``), Transform's
``preprocessing_fn`` run by TF Transform (``components.local_transform``: ``AnalyzeDataset`` on the
DirectRunner, applied with ``transform_features_layer``), ``FieldVocabulary``, ``models.build_model``, ``optim.create``
and ``optim.sparsity``. Training runs in-process on the transformed tensors (no TFX orchestration).

Outputs: a JSON with every run (``benchmarks/results/paper_repro.json``), the report
(``docs/results.md``) and the figure (``docs/auc_vs_sparsity.png``). ``--report-only`` rebuilds the
last two from the JSON.

    TF_USE_LEGACY_KERAS=1 PYTHONPATH=. python -m benchmarks.paper_repro            # full run
    TF_USE_LEGACY_KERAS=1 PYTHONPATH=. python -m benchmarks.paper_repro --report-only
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_JSON = os.path.join(HERE, "results", "paper_repro.json")
DEFAULT_REPORT = os.path.join(ROOT, "docs", "results.md")
DEFAULT_PLOT = os.path.join(ROOT, "docs", "auc_vs_sparsity.png")
SHARED_DATA = os.environ.get("SPARSECTR_SHARED_DATA", os.path.join(os.path.dirname(ROOT), "shared", "data"))

METHODS = ("adam", "adam_rowprune", "tfmot", "group_adam", "group_adagrad")
METHOD_LABELS = {"adam": "Adam (dense)", "adam_rowprune": "Adam + l2 row pruning",
                 "tfmot": "Adam + tfmot prune_low_magnitude (weights)", "group_adam": "Group Adam",
                 "group_adagrad": "Group Adagrad"}


# The settings that may differ per dataset (Settings.for_dataset); results keep them per dataset.
OPTIMIZER_FIELDS = ("learning_rate", "adagrad_learning_rate", "group_adam_l21", "group_adagrad_l21")


@dataclasses.dataclass
class Settings:
    datasets: Sequence[str] = ("criteo", "avazu", "generated")
    models: Sequence[str] = ("dnn", "deepfm")
    seeds: int = 3
    generated_rows: int = 1_000_000
    generated_test_rows: int = 100_000
    epochs_real: int = 3
    epochs_generated: int = 1
    batch_size: int = 256
    batch_size_generated: int = 1024
    learning_rate: float = 0.005  # Adam and Group Adam (the pipeline's default)
    adagrad_learning_rate: float = 0.05
    embedding_dim: int = 8
    hidden_units: Sequence[int] = (64, 32)
    group_adam_l21: Sequence[float] = (3e-4, 1e-3, 3e-3)
    group_adagrad_l21: Sequence[float] = (0.02, 0.05, 0.1)
    # The generated set has ~100x the rows of the real samples, so the same l21 gives another sparsity
    # there, and Group Adagrad at 0.05 barely trains in one epoch: its own grids and Adagrad rate,
    # chosen on a 200k-row set (benchmarks/paper_repro_calibrate.py). None = the values above.
    generated_group_adam_l21: Optional[Sequence[float]] = (1e-4, 1e-3, 3e-3, 1e-2)
    generated_group_adagrad_l21: Optional[Sequence[float]] = (0.01, 0.015, 0.02)
    generated_adagrad_learning_rate: Optional[float] = 0.3
    tfmot: bool = True
    jit_compile: bool = False
    cache_dir: str = os.path.join(tempfile.gettempdir(), "sparsectr_paper_repro")

    def for_dataset(self, dataset: str) -> "Settings":
        """These settings with the dataset's own grids and learning rates in the shared fields."""
        if dataset != "generated":
            return self
        out = self
        for name in OPTIMIZER_FIELDS:
            value = getattr(self, "generated_" + name, None)
            if value is not None:
                out = dataclasses.replace(out, **{name: value})
        return out


# ------------------------------------------------------------------------------------------------
# Data: parse with ExampleGen's parser, Transform with TF Transform, materialize as numpy
# ------------------------------------------------------------------------------------------------
def _avazu_spec():
    """The built-in Avazu spec, with device_id / device_ip as vocab fields instead of 131072 hash buckets.

    The hash tables are sized for the 40M-row Avazu; on an 8k-row sample ~99% of their 2 x 131072 rows
    never appear in a batch, so they keep their random initialization under every optimizer (the
    Group optimizers update rows lazily) and would make up 94% of all rows: row sparsity would then
    measure the hash size, not the optimizer. As vocab fields they follow the same frequency
    threshold as every other field.
    """
    from components.dataset_spec import DatasetSpec, load_spec
    d = load_spec("avazu").to_dict()
    d["columns"] = [{k: v for k, v in c.items() if k not in ("encoding", "hash_buckets")}
                    if c["name"] in ("device_id", "device_ip") else c for c in d["columns"]]
    return DatasetSpec.from_dict(d, source="avazu-vocab")


def _read_lines(paths: Sequence[str]) -> List[str]:
    lines = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            lines.extend(line for line in f.read().split("\n") if line)
    return lines


def _parse(spec, lines: Sequence[str]):
    from components.click_log_example_gen.line_parser import LineParser, Rejection
    parser = LineParser(spec)
    out, rejected = [], 0
    for i, line in enumerate(lines):
        if spec.header and parser.is_header(line):
            continue
        row = parser.parse(line.rstrip("\r"))
        if isinstance(row, Rejection):
            rejected += 1
            continue
        out.append(row.example)
    return out, rejected


@dataclasses.dataclass
class Data:
    name: str
    spec: object
    transform_dir: str
    train: Dict[str, np.ndarray]
    test: Dict[str, np.ndarray]
    info: Dict


def _generated_files(cache: str, rows: int, test_rows: int):
    from pipelines.generator import GeneratorConfig, generate
    cfg = GeneratorConfig(seed=7)
    train_dir, test_dir = os.path.join(cache, "train"), os.path.join(cache, "test")
    truth = os.path.join(cache, "ground_truth.json")
    reports = os.path.join(cache, "generated_reports.json")
    if os.path.exists(reports) and os.path.exists(truth):  # generated before (deterministic: seed 7)
        with open(reports) as f:
            train_report, test_report = json.load(f)
        if os.path.exists(train_report["path"]) and os.path.exists(test_report["path"]):
            return train_report, test_report, truth
    train_report = generate(train_dir, rows, cfg, span=0, truth_path=truth)
    test_report = generate(test_dir, test_rows, cfg, span=1, truth_path=truth)
    with open(reports, "w") as f:
        json.dump([train_report, test_report], f)
    return train_report, test_report, truth


def _true_probabilities(truth_path: str, spec, serialized: Sequence[bytes]) -> np.ndarray:
    """The planted click probability of each (test) row, from its raw features."""
    import tensorflow as tf
    from pipelines.generator import GroundTruth
    truth = GroundTruth.load(truth_path)
    feature_spec = {f: tf.io.VarLenFeature(tf.string) for f in truth.cat_weights}
    feature_spec.update({f: tf.io.VarLenFeature(tf.int64) for f in truth.int_coefs})
    parsed = tf.io.parse_example(tf.constant(list(serialized)), feature_spec)
    n = len(serialized)
    z = np.full(n, truth.bias)
    for f, weights in truth.cat_weights.items():
        dense = tf.sparse.to_dense(parsed[f], default_value=b"").numpy()[:, 0] if parsed[f].dense_shape[1] else \
            np.full(n, b"", dtype=object)
        lookup = {k.encode(): w for k, w in weights.items()}
        z += np.array([lookup.get(v, 0.0) for v in dense])
    for f, c in truth.int_coefs.items():
        sp = parsed[f]
        t = np.zeros(n)
        idx = sp.indices.numpy()[:, 0]
        t[idx] = np.log1p(np.maximum(sp.values.numpy(), 0))
        z += c * (t - truth.int_means[f])
    return 1.0 / (1.0 + np.exp(-z))


def prepare(dataset: str, s: Settings, log=print) -> Data:
    """Parse, Transform (cached under s.cache_dir) and materialize one dataset's train/test splits."""
    import tensorflow_transform as tft
    from components.dataset_spec import load_spec
    from components.local_transform import analyze, transformed

    info: Dict = {}
    if dataset == "criteo":
        spec = load_spec("criteo")
        root = os.path.join(SHARED_DATA, "criteo", "wide-resdnn")
        train_paths = [os.path.join(root, "train.csv")]
        test_paths = [os.path.join(root, "dev.csv"), os.path.join(root, "test.csv")]
        key = "criteo"
    elif dataset == "avazu":
        spec = _avazu_spec()
        root = os.path.join(SHARED_DATA, "avazu", "wide-resdnn")
        train_paths = [os.path.join(root, "train.csv")]
        test_paths = [os.path.join(root, "dev.csv"), os.path.join(root, "test.csv")]
        key = "avazu"
    elif dataset == "generated":
        spec = load_spec("criteo")
        key = f"generated-{s.generated_rows}-{s.generated_test_rows}"
    else:
        raise ValueError(f"unknown dataset {dataset!r}")
    cache = os.path.join(s.cache_dir, key)
    os.makedirs(cache, exist_ok=True)
    started = time.time()
    if dataset == "generated":
        train_report, test_report, truth_path = _generated_files(cache, s.generated_rows, s.generated_test_rows)
        train_paths, test_paths = [train_report["path"]], [test_report["path"]]
        info.update(truth_path=truth_path, bayes_auc_expected=test_report["bayes_auc"],
                    bayes_logloss_expected=test_report["bayes_logloss"])
        info["sources"] = ["pipelines.generator (seed 7): span 0 = train, span 1 = test"]
    else:
        info["sources"] = [os.path.relpath(p, os.path.dirname(ROOT)) for p in train_paths + test_paths]
    train_ser, rej_train = _parse(spec, _read_lines(train_paths))
    test_ser, rej_test = _parse(spec, _read_lines(test_paths))
    info.update(train_rows=len(train_ser), test_rows=len(test_ser), rejected=rej_train + rej_test,
                parse_seconds=round(time.time() - started, 1))
    transform_dir = os.path.join(cache, "transform_graph")
    if not os.path.exists(os.path.join(transform_dir, "transform_fn")):
        t = time.time()
        analyze(spec, train_ser, transform_dir, batch_size=4096, temp_dir=cache)
        info["analyze_seconds"] = round(time.time() - t, 1)
    tft_output = tft.TFTransformOutput(transform_dir)
    t = time.time()
    train, test = transformed(tft_output, train_ser, 65536), transformed(tft_output, test_ser, 65536)
    info["apply_seconds"] = round(time.time() - t, 1)
    info["train_ctr"] = float(train["label"].mean())
    info["test_ctr"] = float(test["label"].mean())
    if dataset == "generated":
        p = _true_probabilities(info["truth_path"], spec, test_ser)
        info["bayes_auc_test"] = _auc(test["label"], p)
        info["bayes_logloss_test"] = _logloss(test["label"], p)
    log(f"[{dataset}] {info['train_rows']} train / {info['test_rows']} test rows, "
        f"CTR {info['train_ctr']:.3f}/{info['test_ctr']:.3f}, prepared in {time.time() - started:.0f}s")
    return Data(dataset, spec, transform_dir, train, test, info)


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------
def _auc(labels, scores) -> float:
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(np.asarray(labels), np.asarray(scores, dtype=np.float64)))


def _logloss(labels, p) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
class Trainer:
    """Builds, trains and evaluates models of one dataset with the project's model and optimizer code."""

    def __init__(self, data: Data, s: Settings):
        import tensorflow_transform as tft
        from components.vocabulary import FieldVocabulary
        self.data, self.s = data, s.for_dataset(data.name)
        s = self.s
        self.vocab = FieldVocabulary(data.spec, tft.TFTransformOutput(data.transform_dir))
        self.fields = self.vocab.embedded_fields
        self.int_fields = list(data.spec.int_columns)
        self.features = self.int_fields + self.fields
        generated = data.name == "generated"
        self.epochs = s.epochs_generated if generated else s.epochs_real
        self.batch_size = s.batch_size_generated if generated else s.batch_size
        self.steps = self.epochs * math.ceil(len(data.train["label"]) / self.batch_size)
        self._train_tensors = None

    def build(self, kind: str):
        from components import models
        return models.build_model(kind, self.int_fields, self.fields, self.vocab.table_rows(),
                                  embedding_dim=self.s.embedding_dim, hidden_units=list(self.s.hidden_units),
                                  global_to_row=self.vocab.global_to_row,
                                  oov_rows={f: self.vocab.oov_row(f) for f in self.vocab.fields})

    def _dataset(self, seed: int):
        """Every epoch a seeded permutation of all train rows, batched, gathered a batch at a time.

        Slicing a dict of 40 feature arrays row by row (`from_tensor_slices(...).shuffle(...)`) cost
        more than the training steps themselves on this machine; gathering whole batches by index
        does not.
        """
        import tensorflow as tf
        if self._train_tensors is None:
            self._train_tensors = ({f: tf.constant(self.data.train[f]) for f in self.features},
                                   tf.constant(self.data.train["label"].astype(np.float32)))
        x, y = self._train_tensors
        n = len(self.data.train["label"])
        rng = np.random.default_rng(seed)
        ds = None
        for _ in range(self.epochs):  # batches never straddle an epoch boundary
            epoch = tf.data.Dataset.from_tensor_slices(rng.permutation(n)).batch(self.batch_size)
            ds = epoch if ds is None else ds.concatenate(epoch)
        return ds.map(lambda i: ({f: tf.gather(v, i) for f, v in x.items()}, tf.gather(y, i)),
                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(4)

    def optimizer(self, method: str, l21: float = 0.0):
        import optim
        if method in ("adam", "tfmot"):
            return optim.create("adam", learning_rate=self.s.learning_rate)
        if method == "group_adam":
            return optim.create("group_adam", learning_rate=self.s.learning_rate, l1=0.0, l2=0.0, l21=l21)
        if method == "group_adagrad":
            return optim.create("group_adagrad", learning_rate=self.s.adagrad_learning_rate, l1=0.0, l2=0.0, l21=l21)
        raise ValueError(method)

    # -- one compiled model per (model, method[, tfmot target]), reset between seeds and lambdas ----
    def session(self, kind: str, method: str, tfmot_target: Optional[float] = None) -> "Session":
        return Session(self, kind, method, tfmot_target)

    def _wrap_tfmot(self, model, target: float):
        import tf_keras as keras
        import tensorflow_model_optimization as tfmot
        sched = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=float(target), begin_step=0,
            end_step=max(1, int(0.7 * self.steps)), frequency=max(1, self.steps // 20))

        def clone(layer):
            if isinstance(layer, keras.layers.Embedding):
                # Weight-level pruning: tfmot 0.8.0's block_size=(1, dim) fails on Embedding layers
                # (it squeezes the [rows, 1] pooled magnitudes to rank 1: "Input tensor must be rank 2").
                return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=sched)
            return layer.__class__.from_config(layer.get_config())

        return keras.models.clone_model(model, clone_function=clone)

    # -- evaluation ------------------------------------------------------------------------------
    @staticmethod
    def embedding_variables(model) -> Dict:
        """field -> embedding table variable, for plain and tfmot-wrapped models."""
        import tf_keras as keras
        out = {}
        for layer in model.layers:
            inner = getattr(layer, "layer", layer)
            if isinstance(inner, keras.layers.Embedding) and inner.name.startswith("embedding_"):
                out[inner.name[len("embedding_"):]] = inner.embeddings
        return out

    def tables(self, model) -> Dict[str, np.ndarray]:
        return {f: v.numpy() for f, v in self.embedding_variables(model).items()}

    def evaluate(self, model, truth: Optional[Dict] = None) -> Dict:
        import optim
        x = {f: self.data.test[f] for f in self.features}
        p = model.predict(x, batch_size=16384, verbose=0)
        tables = self.embedding_variables(model)
        sp = optim.sparsity(tables)
        table_ids = {id(t) for t in tables.values()}
        dense_params = sum(int(np.prod(w.shape)) for w in model.trainable_weights if id(w) not in table_ids)
        kept_rows = sp["rows"] - sp["zero_rows"]
        zero_weights = sum(int(np.sum(t.numpy() == 0)) for t in tables.values())
        weights = sum(int(np.prod(t.shape)) for t in tables.values())
        out = {"auc": _auc(self.data.test["label"], p), "logloss": _logloss(self.data.test["label"], p),
               "sparsity": sp["fraction"], "rows": sp["rows"], "zero_rows": sp["zero_rows"],
               "weight_sparsity": zero_weights / weights,
               "size_bytes": 4 * (kept_rows * self.s.embedding_dim + dense_params),
               "dense_bytes": 4 * (sp["rows"] * self.s.embedding_dim + dense_params)}
        if truth is not None:
            out.update(self.selection(model, truth))
        return out

    def selection(self, model, truth: Dict) -> Dict:
        """Precision / recall of the kept (non-zero) feature-value rows against the planted signal values."""
        planted = {(f, v.encode()) for f, values in truth.items() for v in values}
        kept, in_vocab = set(), set()
        for f, table in self.tables(model).items():
            if f not in self.vocab.values:
                continue
            values = self.vocab.values[f]
            nonzero = np.any(table[:len(values)] != 0, axis=1)
            for row in np.flatnonzero(nonzero):
                kept.add((f, values[row]))
            in_vocab.update((f, v) for v in values)
        planted_in_vocab = planted & in_vocab
        tp = len(kept & planted_in_vocab)
        return {"kept_values": len(kept), "planted_values": len(planted), "planted_in_vocab": len(planted_in_vocab),
                "precision": tp / len(kept) if kept else 0.0,
                "recall": tp / len(planted_in_vocab) if planted_in_vocab else 0.0}


class Session:
    """One compiled model + optimizer, re-initialized for every (seed, l21) run.

    Tracing the train step of a 26-table model costs ~10-15 s on this machine, more than training on
    a real sample; so each (model, method) is compiled once and, before every run, its variables are
    set to a fresh seeded initialization (a new `build_model` with that seed) and the optimizer's to
    their initial values. l21 is set through the optimizer's l21 variables (`l21_variable`, read
    inside the step), so the compiled step follows the grid -- the same arithmetic as a float l21.
    """

    def __init__(self, trainer: "Trainer", kind: str, method: str, tfmot_target: Optional[float] = None):
        import tf_keras as keras
        self.trainer, self.kind, self.method, self.target = trainer, kind, method, tfmot_target
        keras.utils.set_random_seed(0)
        model = trainer.build(kind)
        self.callbacks = []
        if method == "tfmot":
            import tensorflow_model_optimization as tfmot
            model = trainer._wrap_tfmot(model, tfmot_target)
            self.callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
        self.model = model
        self.optimizer = trainer.optimizer(method, 0.0)
        self.optimizer.build(model.trainable_variables)
        self.l21_variables = [self.optimizer.l21_variable(v) for v in model.trainable_variables
                              if method.startswith("group_") and self.optimizer.is_regularized(v)]
        self.optimizer_initial = [v.numpy() for v in self.optimizer.variables()]
        model.compile(optimizer=self.optimizer, loss=keras.losses.BinaryCrossentropy(),
                      jit_compile=trainer.s.jit_compile)

    def _reset(self, seed: int, l21: float):
        import tf_keras as keras
        keras.utils.set_random_seed(seed)
        fresh = self.trainer.build(self.kind)
        if self.method == "tfmot":
            fresh = self.trainer._wrap_tfmot(fresh, self.target)
        for target, source in zip(self.model.variables, fresh.variables):
            if target.shape != source.shape:
                raise RuntimeError(f"variable mismatch {target.name} vs {source.name}")
            target.assign(source)
        del fresh
        for variable, value in zip(self.optimizer.variables(), self.optimizer_initial):
            variable.assign(value)
        for variable in self.l21_variables:
            variable.assign(l21)

    def train(self, seed: int, l21: float = 0.0):
        self._reset(seed, l21)
        started = time.time()
        # One fit over all epochs' batches (the dataset holds every epoch's own permutation).
        history = self.model.fit(self.trainer._dataset(seed), epochs=1, callbacks=self.callbacks, verbose=0)
        fit_seconds = time.time() - started
        if self.method == "tfmot":
            # The optimizer step after the last mask application moves masked weights off zero again
            # (Adam's moments): apply the final mask, as strip_pruning + export would hold it.
            from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper
            for layer in self.model.layers:
                if isinstance(layer, pruning_wrapper.PruneLowMagnitude):
                    for weight, mask, _ in layer.pruning_vars:
                        weight.assign(weight * mask)
        loss = history.history["loss"][-1]
        if not math.isfinite(loss):
            raise RuntimeError(f"{self.kind}/{self.method}/seed {seed}/l21 {l21}: non-finite training loss")
        return self.model, fit_seconds


def prune_rows(fields_tables: Dict, target: float):
    """Zero the embedding rows of smallest l2 norm, one global threshold over all tables, so that a
    fraction `target` of all rows is zero. Returns the original values (to restore)."""
    originals = {f: v.numpy() for f, v in fields_tables.items()}
    names = list(originals)
    norms = np.concatenate([np.linalg.norm(originals[f], axis=1) for f in names])
    k = int(round(target * len(norms)))
    order = np.argsort(norms, kind="stable")
    zero = np.zeros(len(norms), dtype=bool)
    zero[order[:k]] = True
    offset = 0
    for f in names:
        n = originals[f].shape[0]
        value = originals[f].copy()
        value[zero[offset:offset + n]] = 0.0
        fields_tables[f].assign(value)
        offset += n
    return originals


# ------------------------------------------------------------------------------------------------
# The experiment
# ------------------------------------------------------------------------------------------------
def run_block(trainer: Trainer, kind: str, log=print) -> List[Dict]:
    """Every method and seed for one (dataset, model)."""
    import tf_keras as keras
    truth = None
    if trainer.data.name == "generated":
        from pipelines.generator import GroundTruth
        truth = GroundTruth.load(trainer.data.info["truth_path"]).signal_values()
    ds = trainer.data.name
    s = trainer.s  # the settings with this dataset's own grids
    runs: List[Dict] = []

    def record(method, seed, metrics, **extra):
        row = {"dataset": ds, "model": kind, "method": method, "seed": seed, **extra, **metrics}
        runs.append(row)
        log(f"  [{ds}/{kind}] {method:14s} seed {seed} {json.dumps(extra)} auc {metrics['auc']:.4f} "
            f"logloss {metrics['logloss']:.4f} sparsity {metrics['sparsity']:.4f}"
            + (f" P {metrics['precision']:.3f} R {metrics['recall']:.3f}" if "precision" in metrics else ""))

    for method, grid in (("group_adam", s.group_adam_l21), ("group_adagrad", s.group_adagrad_l21)):
        session = trainer.session(kind, method)
        for l21 in grid:
            for seed in range(s.seeds):
                model, secs = session.train(seed, l21)
                record(method, seed, trainer.evaluate(model, truth), l21=l21, fit_seconds=round(secs, 1))
        del session
    # Adam, then Adam + l2 row pruning, paired: each Group run's sparsity on the Adam model of its seed.
    session = trainer.session(kind, "adam")
    group_runs = [r for r in runs if r["method"] in ("group_adam", "group_adagrad")]
    for seed in range(s.seeds):
        model, secs = session.train(seed)
        record("adam", seed, trainer.evaluate(model, truth), fit_seconds=round(secs, 1))
        tables = trainer.embedding_variables(model)
        for g in [r for r in group_runs if r["seed"] == seed]:
            originals = prune_rows(tables, g["sparsity"])
            record("adam_rowprune", seed, trainer.evaluate(model, truth), matched_to=g["method"], l21=g["l21"],
                   target_sparsity=g["sparsity"])
            for f, v in originals.items():
                tables[f].assign(v)
    del session
    if s.tfmot:
        for l21 in s.group_adam_l21:
            target = float(np.mean([r["sparsity"] for r in runs if r["method"] == "group_adam" and r["l21"] == l21]))
            if target <= 0.0:
                continue
            session = trainer.session(kind, "tfmot", tfmot_target=target)
            for seed in range(s.seeds):
                model, secs = session.train(seed)
                record("tfmot", seed, trainer.evaluate(model, truth), matched_to="group_adam", l21=l21,
                       target_sparsity=target, fit_seconds=round(secs, 1))
            del session
    keras.backend.clear_session()
    return runs


def run(s: Settings, log=print, partial_path: Optional[str] = None) -> Dict:
    started = time.time()
    results = {"settings": dataclasses.asdict(s), "datasets": {}, "runs": []}
    results["settings"].pop("cache_dir")
    for ds in s.datasets:
        data = prepare(ds, s, log)
        trainer = Trainer(data, s)
        results["datasets"][ds] = dict(data.info, table_rows=sum(trainer.vocab.table_rows().values()),
                                       epochs=trainer.epochs, batch_size=trainer.batch_size, steps=trainer.steps,
                                       **{k: getattr(trainer.s, k) for k in OPTIMIZER_FIELDS})
        results["datasets"][ds].pop("truth_path", None)
        for kind in s.models:
            t = time.time()
            results["runs"].extend(run_block(trainer, kind, log))
            log(f"[{ds}/{kind}] done in {time.time() - t:.0f}s")
            if partial_path:  # what has finished so far, in case a long run is cut short
                with open(partial_path, "w") as f:
                    json.dump(dict(results, wall_seconds=round(time.time() - started, 1)), f)
    results["wall_seconds"] = round(time.time() - started, 1)
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    return results


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def _mean_sd(values):
    values = np.asarray(values, dtype=np.float64)
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return float(np.mean(values)), sd


def fmt(x, digits=4):
    return f"{x:.{digits}f}"


def _pm(values, digits=4):
    m, sd = _mean_sd(values)
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def _size(b):
    return f"{b / 1024:.0f} KiB" if b < 1 << 20 else f"{b / (1 << 20):.2f} MiB"


def dataset_settings(settings: Dict, info: Dict) -> Dict:
    """A dataset's results info with its optimizer settings; results written before they were kept per
    dataset take them from the run's settings."""
    return dict({k: settings[k] for k in OPTIMIZER_FIELDS}, **info)


def dataset_order(results: Dict) -> List[str]:
    """The datasets of a results dict in report order (the JSON is written with sorted keys)."""
    known = ["criteo", "avazu", "generated"]
    return sorted(results["datasets"], key=lambda d: (known.index(d) if d in known else len(known), d))


def comparisons(results: Dict) -> List[Dict]:
    """One row per (dataset, model, Group method, l21): the Group method vs Adam + row pruning at the
    same (paired) sparsity, and vs tfmot at the same target."""
    runs = results["runs"]
    out = []
    keys = sorted({(r["dataset"], r["model"], r["method"], r["l21"]) for r in runs
                   if r["method"] in ("group_adam", "group_adagrad")},
                  key=lambda k: (dataset_order(results).index(k[0]), k[1], k[2], k[3]))
    for ds, kind, method, l21 in keys:
        group = sorted((r for r in runs if (r["dataset"], r["model"], r["method"], r.get("l21")) == (ds, kind, method, l21)),
                       key=lambda r: r["seed"])
        pruned = {r["seed"]: r for r in runs if r["method"] == "adam_rowprune" and r["dataset"] == ds and
                  r["model"] == kind and r["matched_to"] == method and r["l21"] == l21}
        tf_runs = [r for r in runs if r["method"] == "tfmot" and r["dataset"] == ds and r["model"] == kind and
                   method == "group_adam" and r["l21"] == l21]
        adam = [r for r in runs if r["method"] == "adam" and r["dataset"] == ds and r["model"] == kind]
        g_auc = [r["auc"] for r in group]
        p_auc = [pruned[r["seed"]]["auc"] for r in group]
        diffs = [a - b for a, b in zip(g_auc, p_auc)]
        gm, gsd = _mean_sd(g_auc)
        pm, psd = _mean_sd(p_auc)
        spread = max(gsd, psd)
        delta = gm - pm
        beyond = abs(delta) > spread and len(g_auc) > 1 and (all(d > 0 for d in diffs) or all(d < 0 for d in diffs))
        if beyond:
            verdict = f"{'Group' if delta > 0 else 'Adam+prune'} better, beyond spread"
        else:
            verdict = "no difference beyond seed spread"
        row = {"dataset": ds, "model": kind, "method": method, "l21": l21, "seeds": len(group),
               "sparsity": [r["sparsity"] for r in group], "group_auc": g_auc, "prune_auc": p_auc,
               "group_logloss": [r["logloss"] for r in group], "prune_logloss": [pruned[r["seed"]]["logloss"] for r in group],
               "size_bytes": [r["size_bytes"] for r in group], "adam_auc": [r["auc"] for r in adam],
               "delta": delta, "diff_sd": _mean_sd(diffs)[1], "spread": spread, "beyond_spread": bool(beyond),
               "verdict": verdict}
        if tf_runs:
            row["tfmot_auc"] = [r["auc"] for r in tf_runs]
            row["tfmot_sparsity"] = [r["sparsity"] for r in tf_runs]
            row["tfmot_target"] = tf_runs[0]["target_sparsity"]
        if "precision" in group[0]:
            row["group_pr"] = ([r["precision"] for r in group], [r["recall"] for r in group])
            row["prune_pr"] = ([pruned[r["seed"]]["precision"] for r in group], [pruned[r["seed"]]["recall"] for r in group])
            if tf_runs:
                row["tfmot_pr"] = ([r["precision"] for r in tf_runs], [r["recall"] for r in tf_runs])
        out.append(row)
    return out


def render_markdown(results: Dict, command: str) -> str:
    s = results["settings"]
    rows = comparisons(results)
    L: List[str] = []
    L.append("# Group Adam vs Adam + magnitude pruning at equal embedding-row sparsity")
    L.append("")
    L.append("Generated by `benchmarks/paper_repro.py` from `benchmarks/results/paper_repro.json`; do not edit by "
             "hand. The claim under test (Yue et al., ECML PKDD 2021, arXiv 2107.14432): the Group optimizers "
             "reach a given feature sparsity at a better AUC than the dense optimizer followed by pruning.")
    L.append("")
    L.append("## What was run")
    L.append("")
    L.append(f"Command: `{command}`  ")
    if results.get("note"):
        L.append(f"{results['note']}  ")
    L.append(f"Machine: {results.get('machine', '?')}; wall time {results.get('wall_seconds', 0) / 60:.0f} min.  ")
    L.append(f"Seeds: {s['seeds']} per point (seed = model init + shuffling; the data and splits are fixed). "
             f"Models: {', '.join(s['models'])} (embedding dim {s['embedding_dim']}, hidden units "
             f"{list(s['hidden_units'])}), built by `components.models.build_model` on the output of the project's "
             f"Transform (`components.preprocessing`, run by TF Transform's `AnalyzeDataset`, DirectRunner).  ")
    L.append(f"Optimizers (`optim.create`, as the Trainer's `components.training.make_optimizer`), l1 = l2 = 0, learning rates and l21 grids "
             f"per dataset in the table. jit_compile={s['jit_compile']} (XLA compile time would dominate these "
             f"short runs).")
    L.append("")
    L.append("| dataset | train rows | test rows | test CTR | epochs x batch | steps | embedding rows | "
             "Adam / Group Adam lr | Group Adam l21 | Group Adagrad lr | Group Adagrad l21 |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for ds in dataset_order(results):
        info = dataset_settings(results["settings"], results["datasets"][ds])
        grid = lambda values: ", ".join(f"{v:g}" for v in values)  # noqa: E731
        L.append(f"| {ds} | {info['train_rows']} | {info['test_rows']} | {info['test_ctr']:.3f} | "
                 f"{info['epochs']} x {info['batch_size']} | {info['steps']} | {info['table_rows']} | "
                 f"{info['learning_rate']:g} | {grid(info['group_adam_l21'])} | {info['adagrad_learning_rate']:g} | "
                 f"{grid(info['group_adagrad_l21'])} |")
    L.append("")
    L.append("Data: the real samples are `criteo/wide-resdnn` and `avazu/wide-resdnn` from `../shared/data/` "
             "(train on train.csv, report on dev.csv + test.csv). On Avazu, `device_id`/`device_ip` use the "
             "vocabulary (frequency threshold 10) instead of the built-in spec's 131072 hash buckets: on an "
             "8k-row sample 99% of those hash rows never appear in a batch, keep their random init under every "
             "optimizer and would make row sparsity measure the hash size. The generated set is "
             "`pipelines.generator` (seed 7; span 0 train, span 1 test, same planted truth).")
    L.append("")
    L.append("Methods, all at the same points:")
    L.append("")
    L.append("- **Adam + l2 row pruning**: the Adam model of the same seed, with the embedding rows of smallest l2 "
             "norm set to zero (one global threshold over all tables) until exactly the sparsity that the Group "
             "run reached; no fine-tuning. Paired by seed, so the difference per seed is also reported.")
    L.append("- **tfmot**: `tfmot.sparsity.keras.prune_low_magnitude` on every Embedding layer, weight-level "
             "(individual weights; `block_size=(1, dim)`, which would prune whole rows, fails on Embedding layers "
             "in tfmot 0.8.0: \"Input tensor must be rank 2\"), PolynomialDecay 0 -> target over the first "
             "70% of the steps, trained with Adam; target = the mean sparsity Group Adam reached at that l21, as "
             "a fraction of weights. tfmot applies the target per table (not globally); the final mask is applied "
             "before stripping. Only at the Group Adam points. Its *row* sparsity (in parentheses) is far below "
             "the target, so its AUC is not at a matched row sparsity.")
    L.append("- **Sparsity** = fraction of all embedding rows (OOV rows included) that are entirely zero "
             "(`optim.sparsity`). **Size** = float32 bytes of the non-zero embedding rows + all dense weights "
             "(what a pruned export holds, the id map excluded).")
    L.append("- **Verdict**: *beyond spread* when |mean AUC difference| exceeds the larger of the two methods' seed "
             "standard deviations **and** every seed's paired difference has the same sign; otherwise *no "
             "difference beyond seed spread*. The seed spread does not include test-set sampling noise: on the "
             "~800-row real test sets, AUC differences under ~0.01 are not measurable anyway.")
    L.append("")
    # headline
    L.append("## Headline: Group optimizer vs Adam + pruning at matched sparsity")
    L.append("")
    L.append("AUC mean ± standard deviation over seeds. Δ = Group − (Adam + l2 row pruning), mean over seeds "
             "(± sd of the paired per-seed differences).")
    L.append("")
    for ds in dataset_order(results):
        for kind in s["models"]:
            block = [r for r in rows if r["dataset"] == ds and r["model"] == kind]
            if not block:
                continue
            adam = block[0]["adam_auc"]
            L.append(f"### {ds} / {kind}")
            L.append("")
            L.append(f"Dense Adam: AUC {_pm(adam)}.")
            L.append("")
            L.append("| method | l21 | sparsity | Group AUC | Adam + l2 row prune AUC | tfmot AUC (its sparsity) | Δ AUC | "
                     "spread | verdict | Group logloss | pruned logloss | size |")
            L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
            for r in block:
                tf_cell = (f"{_pm(r['tfmot_auc'])} ({_mean_sd(r['tfmot_sparsity'])[0]:.3f})" if "tfmot_auc" in r else "—")
                L.append(f"| {r['method']} | {r['l21']:g} | {_pm(r['sparsity'], 3)} | {_pm(r['group_auc'])} | "
                         f"{_pm(r['prune_auc'])} | {tf_cell} | {r['delta']:+.4f} ± {r['diff_sd']:.4f} | "
                         f"{r['spread']:.4f} | {r['verdict']} | {_pm(r['group_logloss'])} | "
                         f"{_pm(r['prune_logloss'])} | {_size(_mean_sd(r['size_bytes'])[0])} |")
            L.append("")
            L.append(_summary_sentence(block))
            L.append("")
    gen = results["datasets"].get("generated")
    if gen:
        L.append("## Generated data: ceiling and feature selection")
        L.append("")
        L.append(f"Bayes-optimal AUC on the test split (the planted probabilities scored against its labels): "
                 f"**{gen['bayes_auc_test']:.4f}** (logloss {gen['bayes_logloss_test']:.4f}); in expectation over "
                 f"the labels {gen['bayes_auc_expected']:.4f}. Precision / recall of the kept (non-zero) feature-value "
                 "rows against the planted signal values (recall over the planted values that are in the vocabulary; "
                 "OOV rows not counted):")
        L.append("")
        L.append("| model | method | l21 | sparsity | Group P / R | Adam + l2 prune P / R | tfmot P / R |")
        L.append("|---|---|---|---|---|---|---|")
        for r in rows:
            if r["dataset"] != "generated" or "group_pr" not in r:
                continue
            cells = []
            for key in ("group_pr", "prune_pr", "tfmot_pr"):
                if key in r:
                    cells.append(f"{_mean_sd(r[key][0])[0]:.3f} / {_mean_sd(r[key][1])[0]:.3f}")
                else:
                    cells.append("—")
            L.append(f"| {r['model']} | {r['method']} | {r['l21']:g} | {_pm(r['sparsity'], 3)} | " + " | ".join(cells) + " |")
        L.append("")
    L.append("## Caveats (read before quoting a number)")
    L.append("")
    if gen and gen["train_rows"] < 1_000_000:
        L.append(f"- **Scale.** The issue asks for a generated set of >= 1M rows; this run used "
                 f"{gen['train_rows']} train / {gen['test_rows']} test rows. On the 2 shared CPU cores it ran on, TF "
                 f"Transform's analyze pass alone took {gen.get('analyze_seconds', float('nan')):.0f} s for that set "
                 "(DirectRunner) and every method x point x seed is a separate training run, so 1M rows did not fit "
                 "the time budget. `--generated-rows 1000000` runs the full spec on a bigger machine.")
    rates = sorted({dataset_settings(s, results["datasets"][ds])["adagrad_learning_rate"]
                    for ds in dataset_order(results)})
    L.append(f"- **Group Adagrad** steps all its weights (dense layers included) with Adagrad, at learning rate "
             f"{' / '.join(f'{r:g}' for r in rates)} (per dataset, table above). On the real samples the rate was "
             "not tuned. On the generated set it was chosen on a 200k-row set "
             "(`benchmarks/results/paper_repro_calibration.txt`, DNN, one seed, no l21: AUC 0.664 at 0.05, 0.751 "
             "at 0.3, 0.758 at 0.5, and 1.0 diverged to 0.500; Adam 0.834): 0.3, below the largest rate that "
             "trained, for margin across seeds. On the real samples it trains the whole model worse than Adam "
             "even where it prunes nothing (its lowest l21 point), so there its rows compare a different optimizer "
             "as much as a different pruning method; on the generated set, at its own rate and 977 steps, its AUC "
             "is close to or above dense Adam's. The Group Adam rows are the like-for-like comparison (same "
             "learning rate, same dense-weight optimizer as Adam).")
    L.append("- **tfmot** prunes individual weights (block pruning of whole embedding rows fails in tfmot 0.8.0), "
             "so at a weight sparsity equal to Group Adam's row sparsity it zeroes far fewer whole rows (its "
             "row sparsity is in brackets). Its AUC is therefore *not* at matched row sparsity, and a pruned "
             "export (which drops all-zero rows only) would be larger.")
    L.append("- **Adam + l2 row pruning** is evaluated without fine-tuning after pruning; a fine-tuned "
             "baseline would narrow the gap. The spread is over seeds (init and shuffling) on one fixed test "
             "split; with 3 seeds the sd is itself rough, so treat *beyond spread* as indicative, not as a test.")
    L.append("")
    L.append("## Figure")
    L.append("")
    L.append("![AUC vs embedding-row sparsity](auc_vs_sparsity.png)")
    L.append("")
    L.append("`auc_vs_sparsity.png`: test AUC against row sparsity, one curve per method per dataset and model "
             "(points: mean over seeds; bars: seed sd); the dashed line is dense Adam, the dotted one the "
             "Bayes-optimal AUC where known.")
    L.append("")
    L.append("## All runs")
    L.append("")
    L.append("Every run (one per method, point and seed) is in `benchmarks/results/paper_repro.json`.")
    L.append("")
    return "\n".join(L)


def _summary_sentence(block: List[Dict]) -> str:
    parts = []
    for method in ("group_adam", "group_adagrad"):
        rows = [r for r in block if r["method"] == method and _mean_sd(r["sparsity"])[0] > 0]
        if not rows:
            continue
        better = [r for r in rows if r["beyond_spread"] and r["delta"] > 0]
        worse = [r for r in rows if r["beyond_spread"] and r["delta"] < 0]
        name = METHOD_LABELS[method]
        sparsities = ", ".join("%.3f" % _mean_sd(r["sparsity"])[0] for r in rows)
        deltas = ", ".join("%+.4f" % r["delta"] for r in rows)
        desc = f"{name} vs Adam + l2 row pruning at {len(rows)} matched sparsities ({sparsities}): Δ AUC {deltas}; "
        if better and not worse:
            desc += f"better beyond the seed spread at {len(better)} of {len(rows)}"
        elif worse and not better:
            desc += f"worse beyond the seed spread at {len(worse)} of {len(rows)}"
        elif better and worse:
            desc += f"better beyond spread at {len(better)}, worse at {len(worse)} of {len(rows)}"
        else:
            desc += "no difference beyond the seed spread at any of them"
        parts.append(desc + ".")
    return "**Answer:** " + " ".join(parts) if parts else "**Answer:** no Group run reached a non-zero sparsity."


def render_plot(results: Dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = results["settings"]
    datasets = dataset_order(results)
    fig, axes = plt.subplots(len(s["models"]), len(datasets), figsize=(5.2 * len(datasets), 4.0 * len(s["models"])),
                             squeeze=False)
    styles = {"adam_rowprune": ("tab:blue", "o"), "tfmot": ("tab:green", "s"), "group_adam": ("tab:red", "^"),
              "group_adagrad": ("tab:purple", "v")}
    runs = results["runs"]
    for i, kind in enumerate(s["models"]):
        for j, ds in enumerate(datasets):
            ax = axes[i][j]
            block = [r for r in runs if r["dataset"] == ds and r["model"] == kind]
            for method, (color, marker) in styles.items():
                if method == "adam_rowprune":
                    groups = {}
                    for r in block:
                        if r["method"] == method:
                            groups.setdefault((r["matched_to"], r["l21"]), []).append(r)
                else:
                    groups = {}
                    for r in block:
                        if r["method"] == method:
                            groups.setdefault(r.get("l21"), []).append(r)
                if not groups:
                    continue
                pts = sorted((_mean_sd([r["sparsity"] for r in g]) + _mean_sd([r["auc"] for r in g])
                              for g in groups.values()), key=lambda t: t[0])
                xs = [p[0] for p in pts]
                ax.errorbar(xs, [p[2] for p in pts], xerr=[p[1] for p in pts], yerr=[p[3] for p in pts],
                            color=color, marker=marker, capsize=2, label=METHOD_LABELS[method],
                            linestyle="-" if method != "adam_rowprune" else "--")
            adam = [r["auc"] for r in block if r["method"] == "adam"]
            if adam:
                ax.axhline(np.mean(adam), color="black", linestyle="--", linewidth=0.8, label="Adam (dense)")
            bayes = results["datasets"][ds].get("bayes_auc_test")
            if bayes:
                ax.axhline(bayes, color="gray", linestyle=":", linewidth=1.0, label="Bayes-optimal")
            ax.set_title(f"{ds} / {kind}")
            ax.set_xlabel("embedding-row sparsity")
            ax.set_ylabel("test AUC")
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge_results(paths: Sequence[str]) -> Dict:
    """One results dict from runs over disjoint (dataset, model) blocks with the same seeds (grids and
    learning rates are per dataset; a dataset split over parts must have the same data and grids)."""
    parts = []
    for path in paths:
        with open(path) as f:
            parts.append(json.load(f))
    merged = {"settings": dict(parts[0]["settings"]), "datasets": {}, "runs": [], "wall_seconds": 0.0,
              "machine": parts[0].get("machine"), "commands": []}
    merged["settings"]["models"] = []
    same = ("seeds", "embedding_dim", "hidden_units", "tfmot", "jit_compile")
    blocks = set()
    for part in parts:
        for key in same:
            if part["settings"][key] != merged["settings"][key]:
                raise ValueError(f"cannot merge: setting {key} differs ({part['settings'][key]} vs "
                                 f"{merged['settings'][key]})")
        part_blocks = {(r["dataset"], r["model"]) for r in part["runs"]}
        if part_blocks & blocks:
            raise ValueError(f"cannot merge: {sorted(part_blocks & blocks)} in two parts")
        blocks |= part_blocks
        for ds, info in part["datasets"].items():  # results written before per-dataset grids: from settings
            info = dataset_settings(part["settings"], info)
            known = merged["datasets"].get(ds)
            if known is not None:
                differ = [k for k in ("train_rows", "test_rows", "table_rows", "steps") + OPTIMIZER_FIELDS
                          if known.get(k) != info.get(k)]
                if differ:
                    raise ValueError(f"cannot merge: dataset {ds} differs between parts in {differ}")
                continue
            merged["datasets"][ds] = info
        merged["settings"]["models"] += [m for m in part["settings"]["models"] if m not in merged["settings"]["models"]]
        merged["runs"].extend(part["runs"])
        merged["wall_seconds"] += part.get("wall_seconds", 0.0)
        merged["commands"].extend(part.get("commands") or [part.get("command", "?")])
        if "generated" in part["datasets"]:
            for key in ("generated_rows", "generated_test_rows", "epochs_generated", "batch_size_generated",
                        "generated_group_adam_l21", "generated_group_adagrad_l21", "generated_adagrad_learning_rate"):
                merged["settings"][key] = part["settings"].get(key)
    merged["settings"]["datasets"] = list(merged["datasets"])
    return merged


def write_outputs(results: Dict, report: str, plot: str) -> None:
    command = results.get("command", "python -m benchmarks.paper_repro")
    os.makedirs(os.path.dirname(os.path.abspath(report)), exist_ok=True)
    with open(report, "w") as f:
        f.write(render_markdown(results, command))
    render_plot(results, plot)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def _floats(text):
    return tuple(float(x) for x in text.split(",") if x)


def parse_args(argv=None):
    d = Settings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default=",".join(d.datasets))
    p.add_argument("--models", default=",".join(d.models))
    p.add_argument("--seeds", type=int, default=d.seeds)
    p.add_argument("--generated-rows", type=int, default=d.generated_rows)
    p.add_argument("--generated-test-rows", type=int, default=d.generated_test_rows)
    p.add_argument("--epochs-real", type=int, default=d.epochs_real)
    p.add_argument("--epochs-generated", type=int, default=d.epochs_generated)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--batch-size-generated", type=int, default=d.batch_size_generated)
    p.add_argument("--group-adam-l21", type=_floats, default=d.group_adam_l21)
    p.add_argument("--group-adagrad-l21", type=_floats, default=d.group_adagrad_l21)
    p.add_argument("--learning-rate", type=float, default=d.learning_rate, help="Adam and Group Adam")
    p.add_argument("--adagrad-learning-rate", type=float, default=d.adagrad_learning_rate)
    p.add_argument("--generated-group-adam-l21", type=_floats, default=d.generated_group_adam_l21,
                   help="the generated set's Group Adam grid (default: --group-adam-l21)")
    p.add_argument("--generated-group-adagrad-l21", type=_floats, default=d.generated_group_adagrad_l21,
                   help="the generated set's Group Adagrad grid (default: --group-adagrad-l21)")
    p.add_argument("--generated-adagrad-learning-rate", type=float, default=d.generated_adagrad_learning_rate,
                   help="the generated set's Group Adagrad learning rate (default: --adagrad-learning-rate)")
    p.add_argument("--no-tfmot", action="store_true")
    p.add_argument("--jit-compile", action="store_true")
    p.add_argument("--cache-dir", default=d.cache_dir)
    p.add_argument("--json", default=DEFAULT_JSON)
    p.add_argument("--report", default=DEFAULT_REPORT)
    p.add_argument("--plot", default=DEFAULT_PLOT)
    p.add_argument("--report-only", action="store_true", help="rebuild the report and figure from --json")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="merge the results of runs over disjoint (dataset, model) blocks (same seeds) into "
                        "--json, then write the report")
    p.add_argument("--prepare-only", action="store_true",
                   help="parse, Transform and cache the datasets (under --cache-dir), train nothing")
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: generated data only, 2000 rows, one seed, DNN, one l21 per optimizer")
    return p.parse_args(argv)


def settings_from(args) -> Settings:
    s = Settings(datasets=tuple(args.datasets.split(",")), models=tuple(args.models.split(",")), seeds=args.seeds,
                 generated_rows=args.generated_rows, generated_test_rows=args.generated_test_rows,
                 epochs_real=args.epochs_real, epochs_generated=args.epochs_generated,
                 batch_size=args.batch_size, batch_size_generated=args.batch_size_generated,
                 group_adam_l21=args.group_adam_l21, group_adagrad_l21=args.group_adagrad_l21,
                 learning_rate=args.learning_rate, adagrad_learning_rate=args.adagrad_learning_rate,
                 generated_group_adam_l21=args.generated_group_adam_l21,
                 generated_group_adagrad_l21=args.generated_group_adagrad_l21,
                 generated_adagrad_learning_rate=args.generated_adagrad_learning_rate,
                 tfmot=not args.no_tfmot, jit_compile=args.jit_compile, cache_dir=args.cache_dir)
    if args.quick:
        s = dataclasses.replace(s, datasets=("generated",), models=("dnn",), seeds=1, generated_rows=2000,
                                generated_test_rows=1000, epochs_generated=1, batch_size_generated=256,
                                group_adam_l21=(3e-3,), group_adagrad_l21=(1e-3,), generated_group_adam_l21=None,
                                generated_group_adagrad_l21=None, generated_adagrad_learning_rate=None)
    return s


def main(argv=None) -> int:
    # Here, not at import: a test importing this module must not quiet TF for its subprocesses.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse_args(argv)
    if args.report_only:
        with open(args.json) as f:
            results = json.load(f)
    elif args.prepare_only:
        s = settings_from(args)
        for ds in s.datasets:
            prepare(ds, s, log=lambda m: print(m, flush=True))
        return 0
    elif args.merge:
        results = merge_results(args.merge)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
    else:
        s = settings_from(args)
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        results = run(s, log=lambda m: print(m, flush=True), partial_path=args.json + ".partial")
        results["command"] = "TF_USE_LEGACY_KERAS=1 PYTHONPATH=. python -m benchmarks.paper_repro " + " ".join(
            shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
    write_outputs(results, args.report, args.plot)
    print(f"wrote {args.json}, {args.report}, {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
