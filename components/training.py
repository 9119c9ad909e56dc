"""What the Trainer trains, without TFX: the model of a TrainerConfig, its optimizer and its compile step.

``trainer_module.run_fn`` uses these under its distribution strategy; the benchmarks and tests that
train the Trainer's model without a pipeline use them too (so they need not import the TFX module).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tensorflow_transform.tf_metadata import schema_utils
from tfx_bsl.public import tfxio
from tfx_bsl.tfxio import dataset_util

import optim
from components import distributed, models
from components.dataset_spec import DatasetSpec
from components.example_io import read_examples
from components.preprocessing import LABEL_KEY
from components.trainer_config import TrainerConfig
from components.vocabulary import FieldVocabulary


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or Inf loss; no model is exported."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not tf.math.is_finite(loss):
            raise NonFiniteLossError(
                f"training stopped: loss is {float(loss)} at step {int(self.model.optimizer.iterations.numpy())};"
                " lower the learning rate or check the input features. No model was exported.")


# The marker that the input check puts into its error, so that run_fn tells it from other errors.
NON_FINITE_FEATURE = "sparsectr: non-finite value in transformed feature "


def _values(tensor):
    if isinstance(tensor, tf.SparseTensor):
        return tensor.values
    if isinstance(tensor, tf.RaggedTensor):
        return tensor.flat_values
    return tensor


# The functions tf.data maps over the batches branch on Python values only: autograph has nothing to
# convert in them, and left on it transpiles everything they call on their first trace (the
# transform layer's TFT and Keras code took 5-7 s of a Trainer's start without materializing).
@tf.autograph.experimental.do_not_convert
def check_finite_features(features, label):
    """Fails the input pipeline on the first batch with a NaN or Inf in a float feature.

    Checked explicitly because what a NaN input does to the loss depends on the CPU's kernels (some
    max/ReLU kernels turn NaN into 0): the loss is no guard.
    """
    for name in sorted(features):
        values = _values(features[name])
        if values.dtype.is_floating:
            tf.debugging.assert_all_finite(values, f"{NON_FINITE_FEATURE}{name!r}")
    return features, label


# Records one file gives the reader in a row before it turns to the next file. tfx_bsl's reader
# (the data accessor's tf_dataset_factory) interleaves the files record by record on parallel
# threads; that hand-over per record capped it at ~30k examples/s, below what the Trainer consumes
# at scale (benchmarks/trainer_bench.py measures both readers).
READ_BLOCK_RECORDS = 128
SHUFFLE_BUFFER_RECORDS = 10_000  # tfx_bsl's default: shuffling mixes the records as it did there


def input_dataset(file_pattern, data_accessor, schema, batch_size: int, seed: int, shuffle: bool,
                  transform_output=None):
    """The Trainer's batches of transformed examples over `file_pattern` (TFRecords of tf.Examples,
    as Transform writes them) with the transformed `schema`: one pass, the last batch kept, float
    features checked finite.

    The features and label are those of TFX's data accessor (tfxio) over the same schema; the files
    are read in blocks of records (READ_BLOCK_RECORDS) instead of record by record, then shuffled
    and parsed per batch as tfxio does. A schema with tensor representations of its own (sparse or
    ragged outputs) goes through the data accessor.

    With `transform_output` (a ``tft.TFTransformOutput``) the files hold the raw examples instead
    (ExampleGen's, when Transform did not materialize its output): each batch is parsed with the raw
    feature spec and transformed by the transform graph, as the serving signature does.

    tf.data's autotuning is off (`distributed.without_autotuning`); the mapped functions run without
    autograph.
    """
    if transform_output is not None:
        dataset = _transformed_batches(file_pattern, transform_output, batch_size, seed, shuffle)
    elif schema.tensor_representation_group:
        dataset = data_accessor.tf_dataset_factory(
            file_pattern,
            tfxio.TensorFlowDatasetOptions(batch_size=batch_size, label_key=LABEL_KEY, num_epochs=1,
                                           shuffle=shuffle, shuffle_seed=seed, drop_final_batch=False),
            schema,
        )
    else:
        dataset = _tf_example_batches(file_pattern, schema, batch_size, seed, shuffle)
    return distributed.without_autotuning(
        dataset.map(check_finite_features, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))


def _record_batches(file_pattern, batch_size: int, seed: int, shuffle: bool) -> tf.data.Dataset:
    patterns = tf.convert_to_tensor(file_pattern)
    compression = dataset_util.detect_compression_type(patterns)
    files = tf.data.Dataset.list_files(patterns, shuffle=shuffle, seed=seed)

    @tf.autograph.experimental.do_not_convert
    def file_blocks(name):
        return tf.data.TFRecordDataset(name, compression).batch(READ_BLOCK_RECORDS)

    records = files.interleave(file_blocks, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
    if shuffle:
        records = records.shuffle(SHUFFLE_BUFFER_RECORDS, seed)
    return records.batch(batch_size)


def _tf_example_batches(file_pattern, schema, batch_size: int, seed: int, shuffle: bool) -> tf.data.Dataset:
    feature_spec = schema_utils.schema_as_feature_spec(schema).feature_spec

    @tf.autograph.experimental.do_not_convert
    def parse(serialized):
        features = tf.io.parse_example(serialized, feature_spec)
        return features, features.pop(LABEL_KEY)

    return _record_batches(file_pattern, batch_size, seed, shuffle).map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def _transformed_batches(file_pattern, transform_output, batch_size: int, seed: int, shuffle: bool):
    raw_spec = transform_output.raw_feature_spec()
    layer = transform_output.transform_features_layer()

    @tf.autograph.experimental.do_not_convert
    def transform(serialized):
        features = layer(tf.io.parse_example(serialized, raw_spec))
        return features, features.pop(LABEL_KEY)

    return _record_batches(file_pattern, batch_size, seed, shuffle).map(transform, num_parallel_calls=tf.data.AUTOTUNE)


_KIND_SAMPLE_RECORDS = 100


def holds_raw_examples(file_pattern, transform_output) -> bool:
    """Whether the examples under `file_pattern` are those Transform reads (raw: ExampleGen's) rather
    than those it writes, told by the value kinds of the features of the first _KIND_SAMPLE_RECORDS
    examples (a raw categorical is bytes, its transformed id int64); examples that fit both, or
    none, count as transformed."""
    def kinds(feature_spec):
        return {name: {tf.string: "bytes_list", tf.int64: "int64_list", tf.float32: "float_list"}.get(spec.dtype)
                for name, spec in feature_spec.items()}

    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    found = {name: feature.WhichOneof("kind")
             for record in read_examples(patterns, _KIND_SAMPLE_RECORDS)
             for name, feature in tf.train.Example.FromString(record).features.feature.items()}
    if not found:
        return False

    def fits(feature_spec):
        expected = kinds(feature_spec)
        return all(expected.get(name) == kind for name, kind in found.items())

    transformed, raw = fits(transform_output.transformed_feature_spec()), fits(transform_output.raw_feature_spec())
    if not transformed and not raw:
        raise ValueError(f"the examples under {file_pattern} are neither Transform's input nor its output "
                         f"(features {sorted(found)})")
    return raw and not transformed


def build_model(config: TrainerConfig, spec: DatasetSpec, vocabulary: FieldVocabulary):
    """The (uncompiled) model of a trainer config over one Transform output's vocabulary."""
    return models.build_model(config.model, spec.int_columns, vocabulary.embedded_fields, vocabulary.table_rows(),
                              embedding_dim=config.embedding_dim, embedding_dims=config.embedding_dims,
                              hidden_units=config.hidden_units, global_to_row=vocabulary.global_to_row,
                              oov_rows={f: vocabulary.oov_row(f) for f in vocabulary.fields},
                              rows_relative_to_oov=config.rows_relative_to_oov)


def model_kind(config: TrainerConfig) -> str:
    """The model as warm start tells them apart: a state of rows relative to the OOV row cannot seed
    absolute rows, or the reverse."""
    return config.model + ("/rows-relative-to-oov" if config.rows_relative_to_oov else "")


def make_optimizer(config: TrainerConfig):
    """The config's optimizer (``optim.create``), with its learning rate, l1/l2/l21 and jit_compile.

    Uncompiled training keeps the optimizer's sparse step uncompiled too: compiling it per table (26
    XLA compilations) cost more first-epoch time than it saved (benchmarks/trainer_bench.py).
    """
    return optim.create(config.optimizer, learning_rate=config.learning_rate, l1=config.l1, l2=config.l2,
                        l21=config.l21, jit_compile=resolve_jit_compile(config))


def resolve_jit_compile(config: TrainerConfig) -> bool:
    """The config's `jit_compile` on this machine ("auto": whether it has a GPU)."""
    return config.resolve_jit_compile(has_gpu=bool(tf.config.list_logical_devices("GPU")))


def compile_model(model, config: TrainerConfig, jit_compile: bool, run_eagerly=None, **options) -> None:
    """Compiles as the Trainer trains: the config's optimizer, log loss, AUC, `jit_compile`.

    Keras' train/test/predict steps call only TF ops, so autograph has nothing to convert in them;
    left on, it transpiles every layer and the optimizer's code on the first trace, which was most of
    the first epoch (benchmarks/trainer_bench.py reports the first epoch of every cell).
    """
    optimizer = make_optimizer(dataclasses.replace(config, jit_compile=jit_compile))
    model.compile(optimizer=optimizer, loss=keras.losses.BinaryCrossentropy(),
                  metrics=[keras.metrics.AUC(name="auc")], jit_compile=jit_compile, run_eagerly=run_eagerly,
                  **options)
    for step in ("train_step", "test_step", "predict_step"):
        setattr(model, step, tf.autograph.experimental.do_not_convert(getattr(model, step)))
    train_step = model.train_step

    # The Trainer's datasets have no known length, so each first epoch ends with a step whose
    # get_next fails. Uncompiled, the optimizer's ops that do not read the batch (its step counter;
    # tf_keras Adam's decay of its moments) still ran in that step: 253 steps counted for 252 batches.
    # Every op of the step now waits for the batch.
    def train_step_after_its_batch(data):
        with tf.control_dependencies(tf.nest.flatten(data)):
            return train_step(data)

    model.train_step = tf.autograph.experimental.do_not_convert(train_step_after_its_batch)
    # The optimizer's slots exist before fit traces its step: a tf.function whose first trace creates
    # variables is traced a second time, and the optimizer's step is most of a trace.
    model.optimizer.build(model.trainable_variables)
    if not model.run_eagerly and runs_steps_per_execution(model.distribute_strategy):
        for step in ("train_step", "test_step", "predict_step"):
            setattr(model, step, _traced_once(getattr(model, step)))
    _fit_with_steps_per_execution(model, config.steps_per_execution)


def _traced_once(step):
    """`step` as one `tf.function`, which Keras' train/test/predict functions call.

    Keras wraps each step in a new (XLA) function every time it traces its own function, and it traces
    its loop of several steps per call twice (AutoGraph first traces the loop's body to learn what the
    loop returns), so the whole step, optimizer included, was traced twice. Held in one function, the
    step is traced once and the second trace of Keras' loop reuses it. The closure keeps the function
    off the model's tracked attributes, so it is not saved with the model. On one replica only: across
    replicas, the optimizer's gradient exchange cannot run inside a nested function."""
    function = tf.function(step, autograph=False, reduce_retracing=True)
    return tf.autograph.experimental.do_not_convert(lambda data: function(data))


def _fit_with_steps_per_execution(model, steps: int) -> None:
    """`model.fit` runs up to `steps` steps per call into TensorFlow (Keras' steps_per_execution) on one
    replica when it knows how many batches its training and validation data have; evaluate, predict
    and any other fit run one step per call, as Keras' default.

    Keras refuses several steps per call over data of unknown length: it learns an epoch's length from
    where the data ran out, counted in whole calls, and a last call that ran out part way would count
    as none (later epochs would skip those batches). The Trainer counts its splits (`run_fn`)."""
    if steps <= 1:
        return
    fit = model.fit

    def fit_with_steps_per_execution(x=None, y=None, *args, callbacks=None, **kwargs):
        callbacks = list(callbacks or [])
        if (runs_steps_per_execution(model.distribute_strategy)
                and _length_known(x, kwargs.get("steps_per_epoch"))
                and _length_known(kwargs.get("validation_data"), kwargs.get("validation_steps"))):
            limits = [c.max_steps_per_execution for c in callbacks if hasattr(c, "max_steps_per_execution")]
            callbacks.insert(0, StepsPerExecution(steps, limits))
            model.steps_per_execution = steps  # before fit builds its train function, which reads it
        try:
            return fit(x, y, *args, callbacks=callbacks, **kwargs)
        finally:
            model.steps_per_execution = 1

    model.fit = fit_with_steps_per_execution


def runs_steps_per_execution(strategy) -> bool:
    """Whether fit under `strategy` runs several steps per call: on one replica. Over several, a
    partial last batch splits unevenly and the replicas' gradient exchange inside Keras' loop of steps
    fails on the shapes; parameter servers run each call as a scheduled closure."""
    return strategy.num_replicas_in_sync == 1 and not distributed.is_parameter_server(strategy)


def _length_known(data, steps) -> bool:
    if data is None or steps is not None:
        return True
    if isinstance(data, tf.data.Dataset):
        return int(data.cardinality()) >= 0
    return isinstance(data, (np.ndarray, tf.Tensor, list, tuple, dict))


class StepsPerExecution(keras.callbacks.Callback):
    """Sets the model's steps per call into TensorFlow at each epoch's start: `steps`, or less where
    another callback acts between calls (`limits`: callables, e.g. `SparsityTarget`'s interval)."""

    def __init__(self, steps: int, limits=()):
        super().__init__()
        self.steps, self.limits = int(steps), list(limits)

    def on_epoch_begin(self, epoch, logs=None):
        steps = self.steps
        for limit in self.limits:
            steps = min(steps, int(limit()))
        self.model.steps_per_execution = max(1, steps)
