"""TFX Trainer module: `run_fn` trains a CTR model on Transform's output and exports it.

The exported SavedModel has three signatures that give the same score for the same row:
``serving_default`` (serialized raw tf.Example, input ``examples``), ``predict_raw`` (one typed raw
tensor per feature, JSON-friendly for TF Serving's REST API) and ``transform_features`` (for TFMA).
A sparsity report (``sparsity.json``) is written beside the exported model.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import tempfile
import time
from typing import Any, Dict

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from absl import logging
from tfx.components.trainer.fn_args_utils import FnArgs

from components import distributed, export_signatures, models, warm_start
from components.dataset_spec import DatasetSpec
from components.trainer_config import DISTRIBUTIONS, PS_TARGET_ERROR, TrainerConfig
from components.training import (NON_FINITE_FEATURE, model_kind, NonFiniteLossError, StopOnNonFiniteLoss,
                                 build_model, compile_model, holds_raw_examples, input_dataset, resolve_jit_compile,
                                 runs_steps_per_execution)
from components.vocabulary import FieldVocabulary

SPARSITY_FILE = "sparsity.json"
TRAINING_FILE = "training.json"


class NonFiniteInputError(NonFiniteLossError):
    """A transformed feature holds NaN or Inf; no model is exported."""


class NonFiniteWeightsError(NonFiniteLossError):
    """A weight or optimizer slot became NaN or Inf; no model is exported."""


def non_finite_variables(variables) -> list:
    """Names of the variables holding a NaN or Inf (one reduction per variable, no host copy)."""
    from optim import sharded  # a sharded table is checked shard by shard
    return [v.name for v in sharded.flatten(variables)
            if v.dtype.is_floating and not bool(tf.reduce_all(tf.math.is_finite(v)).numpy())]


class _SparsityToTensorBoard(keras.callbacks.Callback):
    """Embedding-row sparsity (overall and per table) after each epoch, beside Keras' loss and AUC."""

    def __init__(self, log_dir: str):
        super().__init__()
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "sparsity"))

    def on_epoch_end(self, epoch, logs=None):
        import optim
        report = optim.sparsity(models.embedding_tables(self.model))
        with self.writer.as_default(step=epoch):
            tf.summary.scalar("embedding_row_sparsity", report["fraction"])
            for field, table in report["tables"].items():
                tf.summary.scalar(f"embedding_row_sparsity/{field}", table["fraction"])
        self.writer.flush()


class KeepBestEpoch(keras.callbacks.Callback):
    """Early stopping on the eval split's AUC that keeps the best epoch's model, optimizer state included.

    The best epoch's weights and optimizer slots go to a checkpoint on disk (not a copy in memory:
    tables and their slots may be most of the process); after training they are restored if a later
    epoch was worse, so the exported model, its sparsity and the warm-start state are the best
    epoch's. Training stops after `patience` epochs without a better AUC.

    `eligible` (optional, no arguments): whether the epoch just ended may be kept; one that may not (a
    sparsity or size target not reached yet, components.sparsity_target) is no candidate and does
    not count toward the patience.
    """

    def __init__(self, checkpoint_dir: str, monitor: str = "val_auc", patience: int = 1, eligible=None):
        super().__init__()
        self.checkpoint_prefix = os.path.join(checkpoint_dir, "best")
        self.monitor, self.patience, self.eligible = monitor, patience, eligible
        self.best_value, self.best_epoch, self.values = -math.inf, None, []
        self.ineligible_epochs = []

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(value):
            return
        self.values.append(float(value))
        if self.eligible is not None and not self.eligible():
            self.ineligible_epochs.append(epoch + 1)
            return
        if value > self.best_value:
            self.best_value, self.best_epoch = float(value), epoch
            warm_start.snapshot(self.checkpoint_prefix, self.model, self.model.optimizer)
        elif epoch - self.best_epoch - sum(1 for e in self.ineligible_epochs if e > self.best_epoch + 1) \
                >= self.patience:
            self.model.stop_training = True

    def restore_best(self, last_epoch: int) -> bool:
        """Restores the best epoch's state if it is not the last one; whether it did."""
        if self.best_epoch is None or self.best_epoch == last_epoch:
            return False
        warm_start.restore_snapshot(self.checkpoint_prefix, self.model, self.model.optimizer)
        return True

    def report(self, last_epoch: int, restored: bool) -> Dict[str, Any]:
        return {"monitor": self.monitor, "patience": self.patience, "values": [round(v, 6) for v in self.values],
                "best_epoch": None if self.best_epoch is None else self.best_epoch + 1,
                "best_value": None if self.best_epoch is None else round(self.best_value, 6),
                "epochs_run": last_epoch + 1, "restored_best": restored,
                **({"epochs_off_target": self.ineligible_epochs} if self.eligible is not None else {})}


def distribution_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """The tf.distribute strategy that `run_fn` trains under (config `trainer.distribution`).

    ``none``: the default (one device). ``mirrored``: MirroredStrategy over this machine's GPUs, or
    its logical CPUs when it has none. ``multi_worker``: MultiWorkerMirroredStrategy, cluster from
    ``TF_CONFIG`` (as a Kubeflow TFJob or Vertex AI training job sets it). ``parameter_server``:
    ParameterServerStrategy from ``TF_CONFIG`` (on the chief), embedding tables sharded over the
    parameter servers (`components.distributed`). ``auto``: parameter_server when ``TF_CONFIG`` has
    ps tasks, multi_worker when it names more than one chief/worker task, mirrored when there are
    several GPUs, else none.
    """
    if name not in DISTRIBUTIONS:
        raise ValueError(f"trainer.distribution {name!r} not in {list(DISTRIBUTIONS)}")
    if name == "auto":
        name = distributed.auto_distribution() or (
            "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "none")
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "multi_worker":
        return distributed.multi_worker_strategy()
    if name == "parameter_server":
        return distributed.parameter_server_strategy()
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy(devices=[d.name for d in devices])


def is_chief(cluster_resolver) -> bool:
    """Whether this task writes the model: the chief, or worker 0 of a cluster without one; always
    when not in a cluster (no resolver, or one without a task type)."""
    if cluster_resolver is None or not cluster_resolver.task_type:
        return True
    cluster = cluster_resolver.cluster_spec().as_dict()
    if "chief" in cluster:
        return cluster_resolver.task_type == "chief"
    return cluster_resolver.task_type == "worker" and cluster_resolver.task_id == 0


def _non_finite_input(error: Exception):
    """The one-line NonFiniteInputError for an input-check failure raised inside fit, else None."""
    message = getattr(error, "message", None) or str(error)
    if NON_FINITE_FEATURE not in message:
        return None
    feature = message.split(NON_FINITE_FEATURE, 1)[1].split()[0].rstrip(":.")
    return NonFiniteInputError(
        f"training stopped: transformed feature {feature} holds NaN or Inf; check that column upstream"
        " (ExampleGen/Transform). No model was exported.")


class SplitChangedError(RuntimeError):
    """A split's files held a different number of batches when read than when counted before fit."""


# tf.data's message when a dataset runs past or short of its asserted cardinality.
_CARDINALITY_MISMATCH = re.compile(
    r"expected to contain (\d+) elements but contained (only|at least) (\d+) elements")


def _split_changed(error):
    """The one-line SplitChangedError for a split whose files changed between the Trainer's count and
    its read: `error` from tf.data (`tf.data.experimental.assert_cardinality` in `run_fn`), or None
    for files found changed after fit. None for any other error."""
    if error is None:
        detail = "their sizes or times differ from when their batches were counted"
    else:
        match = _CARDINALITY_MISMATCH.search(getattr(error, "message", None) or str(error))
        if match is None:
            return None
        counted, how, read = match.groups()
        detail = f"{counted} batches counted before training, {how} {read} read"
    return SplitChangedError(
        f"training stopped: a split's files changed while the Trainer read them ({detail}); rerun the"
        " Trainer on data that is not being rewritten. No model was exported.")


def _file_stamps(patterns):
    """(path, size, modification time) of every file matching `patterns`, sorted."""
    stamps = []
    for path in sorted({path for pattern in patterns for path in tf.io.gfile.glob(pattern)}):
        stat = tf.io.gfile.stat(path)
        stamps.append((path, stat.length, stat.mtime_nsec))
    return stamps


def run_fn(fn_args: FnArgs):
    cfg = TrainerConfig.from_json(fn_args.custom_config["trainer"])
    if distributed.serve_if_cluster_task(cfg.distribution):
        return  # a worker or parameter server of a parameter-server cluster: served until stopped
    spec = DatasetSpec.from_json(fn_args.custom_config["dataset_spec"])
    keras.utils.set_random_seed(cfg.seed)
    tft_output = tft.TFTransformOutput(fn_args.transform_output)

    vocabulary = FieldVocabulary(spec, tft_output)
    table_rows = vocabulary.table_rows()
    strategy = distribution_strategy(cfg.distribution)
    replicas = strategy.num_replicas_in_sync
    jit_compile = resolve_jit_compile(cfg)
    if jit_compile and (replicas > 1 or not distributed.jit_compile_allowed(strategy)):
        # tf_keras's compiled train step cannot reach the other replicas' (or tasks') variables.
        logging.warning("jit_compile off: %d replicas under %s", replicas, type(strategy).__name__)
        jit_compile = False
    # Variables (model, optimizer slots, metrics) mirrored on every replica; under parameter servers
    # on those, each embedding table (and its slots) split by rows over all of them.
    with strategy.scope(), distributed.sharded_tables(strategy):
        model = build_model(cfg, spec, vocabulary)
        compile_model(model, cfg, jit_compile, **distributed.compile_options(strategy))
        warm = _warm_start(fn_args, cfg, model, vocabulary)

    schema = tft_output.transformed_metadata.schema
    # ExampleGen's examples when Transform did not materialize its output: transformed per batch here.
    transform_per_batch = tft_output if holds_raw_examples(fn_args.train_files, tft_output) else None
    if transform_per_batch is not None and distributed.is_parameter_server(strategy):
        raise ValueError("parameter-server training reads transformed examples: run Transform with "
                         "data.materialize_transformed: true")

    def train_dataset():
        return input_dataset(fn_args.train_files, fn_args.data_accessor, schema, cfg.batch_size, cfg.seed, True,
                             transform_output=transform_per_batch)

    evaluation = distributed.sharded_by_batches(strategy, input_dataset(
        fn_args.eval_files, fn_args.data_accessor, schema, cfg.batch_size, cfg.seed, False,
        transform_output=transform_per_batch))
    epochs, steps_per_epoch = (cfg.epochs if not fn_args.train_steps else 1), fn_args.train_steps or None
    counted_files = None
    if distributed.is_parameter_server(strategy):
        # Each worker reads its own batches, repeated: an epoch is a pass over the split's batches.
        train = distributed.train_dataset_creator(train_dataset)
        steps_per_epoch = distributed.parameter_server_steps(fn_args.train_steps, fn_args.train_files,
                                                             cfg.batch_size)
    else:
        train = distributed.sharded_by_batches(strategy, train_dataset())
        if fn_args.train_steps:
            train = train.repeat()
        if cfg.steps_per_execution > 1 and runs_steps_per_execution(strategy):
            # Several steps per call need the splits' lengths up front (training.StepsPerExecution).
            # A split rewritten after its count must not train on part of it: tf.data fails the epoch
            # if it turns out shorter, and the files are checked unchanged after fit (Keras stops an
            # epoch at the counted batches, so a longer split would lose its last ones silently).
            counted_files = _file_stamps(list(fn_args.train_files) + list(fn_args.eval_files))
            if not fn_args.train_steps:
                train = train.apply(tf.data.experimental.assert_cardinality(
                    distributed.split_batches(fn_args.train_files, cfg.batch_size)))
            evaluation = evaluation.apply(tf.data.experimental.assert_cardinality(
                distributed.split_batches(fn_args.eval_files, cfg.batch_size)))
    logging.info("training %s with %s on %d embedding tables (%d rows)", cfg.model, cfg.optimizer,
                 len(table_rows), sum(table_rows.values()))
    fit_started = time.time()
    callbacks = distributed.coordinator_callbacks(strategy, [
        StopOnNonFiniteLoss(), keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch"),
        _SparsityToTensorBoard(fn_args.model_run_dir)])
    scratch = tempfile.mkdtemp(prefix="sparsectr-best-")
    keep_best = KeepBestEpoch(scratch, patience=cfg.early_stopping_patience) if cfg.early_stopping else None
    target = _sparsity_target(cfg, model, fn_args.model_run_dir, callbacks, keep_best,
                              warm_duals=bool(warm.get("restored") and warm.get("optimizer_state")))
    try:
        with distributed.cluster_errors(strategy):  # a task that died: one line
            history = model.fit(
                train,
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
                validation_data=evaluation,
                callbacks=callbacks + ([keep_best] if keep_best else []),
                verbose=2,
            )
            last_epoch = history.epoch[-1] if history.epoch else 0
            if counted_files is not None and _file_stamps([path for path, _, _ in counted_files]) != counted_files:
                raise _split_changed(None)
            restored_best = keep_best.restore_best(last_epoch) if keep_best else False
    except tf.errors.InvalidArgumentError as error:
        non_finite = _non_finite_input(error)
        if non_finite is None:
            raise
        raise non_finite from None
    except tf.errors.FailedPreconditionError as error:
        changed = _split_changed(error)
        if changed is None:
            raise
        raise changed from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if restored_best:
        logging.info("kept epoch %d of %d (%s %.4f)", keep_best.best_epoch + 1, last_epoch + 1,
                     keep_best.monitor, keep_best.best_value)

    chosen = keep_best.best_epoch if restored_best else -1
    final = {k: float(v[chosen]) for k, v in history.history.items()}
    if not all(math.isfinite(v) for v in final.values()):
        raise NonFiniteLossError(f"training ended with non-finite metrics {final}; no model was exported")
    # A NaN gradient can leave a finite loss behind (the group-lasso step maps a NaN row to zero):
    # the weights and the optimizer's slots are checked themselves before anything is written.
    broken = non_finite_variables(list(model.variables) + list(model.optimizer.variables()))
    if broken:
        raise NonFiniteWeightsError(
            f"training stopped: {len(broken)} variable(s) hold NaN or Inf after training, first"
            f" {broken[0]}; lower the learning rate or check the input features. No model was exported.")

    fit_seconds = time.time() - fit_started
    report = sparsity_report(model)
    export_started = time.time()
    logging.info("exporting the model and its warm-start state")  # pipelines.progress.EXPORTING
    signatures = export_signatures.signatures(model, tft_output, spec)
    # Under MultiWorkerMirroredStrategy every task must save (saving runs collectives), but only the
    # chief's copy is the model: the others write to a scratch folder, deleted below.
    chief = is_chief(getattr(strategy, "cluster_resolver", None))
    serving_model_dir = fn_args.serving_model_dir if chief else os.path.join(
        tempfile.mkdtemp(prefix="non-chief-"), "Format-Serving")
    model_root = os.path.dirname(serving_model_dir.rstrip("/"))
    # Written to a staging folder and renamed into place once complete: a run that fails while
    # saving (a parameter server that dies, say) leaves no half-written model behind.
    with distributed.cluster_errors(strategy), _staged(model_root) as staging:
        # The optimizer state goes to the warm-start folder, not into the serving model (3x its tables).
        # save_traces=False: serving, TFMA and the Pusher use the signatures or rebuild the model from
        # its config (`pruning.load_trained_model`); tracing every layer's call for Keras was most of
        # the rest of the save.
        model.save(os.path.join(staging, os.path.basename(serving_model_dir.rstrip("/"))), save_format="tf",
                   signatures=signatures, include_optimizer=False, save_traces=False,
                   options=distributed.save_options(strategy))
        warm["state_bytes"] = warm_start.save(
            warm_start.state_dir(staging), model, model.optimizer, vocabulary.path,
            {"model": model_kind(cfg), "optimizer": cfg.optimizer, "table_rows": table_rows})
    export_seconds = time.time() - export_started
    training = {"model": cfg.model, "optimizer": cfg.optimizer,
                # This run's steps; a warm start continues the optimizer's step counter.
                "steps": int(model.optimizer.iterations.numpy()) - int(warm.get("steps_before", 0))
                if warm.get("optimizer_state") else int(model.optimizer.iterations.numpy()),
                "epochs": len(history.epoch),
                "early_stopping": keep_best.report(last_epoch, restored_best) if keep_best else None,
                "history": {k: [round(float(x), 6) for x in v] for k, v in history.history.items()},
                "final": final, "table_rows": table_rows, "warm_start": warm,
                # batch_size is the global batch: each replica gets batch_size / replicas rows.
                "distribution": {"strategy": type(strategy).__name__.lstrip("_"), "replicas": replicas,
                                 "jit_compile": jit_compile, **distributed.describe(strategy)},
                "fit_seconds": round(fit_seconds, 1), "export_seconds": round(export_seconds, 1)}
    training["sparsity_target"] = _sparsity_target_report(target, model)
    for name, payload in ((SPARSITY_FILE, report), (TRAINING_FILE, training)):
        with tf.io.gfile.GFile(os.path.join(model_root, name), "w") as f:
            f.write(json.dumps(payload, indent=1, sort_keys=True))
    if not chief:
        shutil.rmtree(model_root, ignore_errors=True)
        distributed.wait_for_chief_model(fn_args.serving_model_dir)
    logging.info("embedding-row sparsity %.4f (%d of %d rows are zero)",
                 report["fraction"], report["zero_rows"], report["rows"])


@contextlib.contextmanager
def _staged(model_root: str):
    """A fresh folder under `model_root` whose entries are renamed into `model_root` if the block
    completes; removed (with whatever was written) if it fails."""
    staging = os.path.join(model_root, f".staging-{os.getpid()}-{int(time.time() * 1e6)}")
    tf.io.gfile.makedirs(staging)
    try:
        yield staging
        for name in tf.io.gfile.listdir(staging):
            name = name.rstrip("/")
            target = os.path.join(model_root, name)
            if tf.io.gfile.exists(target):
                tf.io.gfile.rmtree(target) if tf.io.gfile.isdir(target) else tf.io.gfile.remove(target)
            tf.io.gfile.rename(os.path.join(staging, name), target)
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)


def _warm_start(fn_args, cfg: TrainerConfig, model, vocabulary) -> Dict[str, Any]:
    """Continue from the last pushed model (fn_args.base_model, from LatestPushedModel) if any."""
    if not cfg.warm_start:
        return {"restored": False, "reason": "trainer.warm_start is off"}
    if not fn_args.base_model or not tf.io.gfile.exists(os.path.join(fn_args.base_model, "saved_model.pb")):
        return {"restored": False, "reason": "no pushed model yet"}
    report = warm_start.restore(warm_start.state_dir(fn_args.base_model), model, model.optimizer, vocabulary,
                                model_kind(cfg), cfg.optimizer)
    if report["restored"]:
        logging.info("warm start from %s: %d embedding rows carried over, %d new, %d dropped; optimizer "
                     "state %s", report["source"], report["rows_carried"], report["rows_new"],
                     report["rows_dropped"], "restored" if report["optimizer_state"] else "fresh")
    else:
        logging.warning("cold start: %s", report["reason"])
    return report


def sparsity_report(model) -> Dict[str, Any]:
    """Per field: rows, all-zero rows and their fraction; plus the overall numbers, and the bytes of the
    non-zero embedding rows (per table and in all), of the other weights and of both (`model_bytes`,
    what gates.max_model_bytes limits)."""
    import optim
    from components.sparsity_target import weight_bytes
    return dict(optim.sparsity(models.embedding_tables(model)), **weight_bytes(model))


def _sparsity_target(cfg: TrainerConfig, model, log_dir: str, callbacks: list, keep_best,
                     warm_duals: bool = False):
    """The SparsityTarget callback of the config's targets, appended to `callbacks` (and keep_best's
    candidates limited to epochs on target); None without a target, when every table trains at the
    config's l21 (also after a warm start that carried a target's l21).

    warm_duals: the optimizer state (the duals z) was carried over from the pushed model. The kept
    rows' budget then is whole from the first step: the duals already hold the evidence that opening
    it slowly waits for on a cold start (`ControllerSettings.release`), and opening it again would
    zero the carried model's rows first."""
    from components import sparsity_target
    groups = sparsity_target.targets(dataclasses.asdict(cfg))
    optimizer = model.optimizer
    if not groups:
        for variable in getattr(optimizer, "_l21_variables", None) or []:
            variable.assign(cfg.l21)
        return None
    if distributed.is_parameter_server(model.distribute_strategy):  # "auto" resolved to it at run time
        raise ValueError(f"trainer.target_sparsity/max_embedding_bytes: {PS_TARGET_ERROR}")
    settings = sparsity_target.ControllerSettings(release=0.0) if warm_duals else None
    callback = sparsity_target.SparsityTarget(groups, log_dir=log_dir, settings=settings)
    callbacks.append(callback)
    if keep_best is not None:
        keep_best.eligible = callback.on_target
    logging.info("l21 set while training for %s", sparsity_target.describe(groups))
    return callback


def _sparsity_target_report(target, model):
    if target is None:
        return None
    report = target.report()
    for name, group in report["groups"].items():
        logging.info("target %s: reached sparsity %.4f, %d bytes of non-zero rows, l21 %.3g -> %.3g",
                     name, group["reached_sparsity"], group["reached_bytes"], group["l21_start"], group["l21"])
    return report
