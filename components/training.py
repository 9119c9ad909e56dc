"""What the Trainer trains, without TFX: the model of a TrainerConfig, its optimizer and its compile step.

``trainer_module.run_fn`` uses these under its distribution strategy; the benchmarks and tests that
train the Trainer's model without a pipeline use them too (so they need not import the TFX module).
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf
import tf_keras as keras

import optim
from components import models
from components.dataset_spec import DatasetSpec
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


def build_model(config: TrainerConfig, spec: DatasetSpec, vocabulary: FieldVocabulary):
    """The (uncompiled) model of a trainer config over one Transform output's vocabulary."""
    return models.build_model(config.model, spec.int_columns, vocabulary.embedded_fields, vocabulary.table_rows(),
                              embedding_dim=config.embedding_dim, embedding_dims=config.embedding_dims,
                              hidden_units=config.hidden_units, global_to_row=vocabulary.global_to_row,
                              oov_rows={f: vocabulary.oov_row(f) for f in vocabulary.fields})


def make_optimizer(config: TrainerConfig):
    """The config's optimizer (``optim.create``), with its learning rate, l1/l2/l21 and jit_compile.

    Uncompiled training keeps the optimizer's sparse step uncompiled too: compiling it per table (26
    XLA compilations) cost more first-epoch time than it saved (benchmarks/trainer_bench.py).
    """
    return optim.create(config.optimizer, learning_rate=config.learning_rate, l1=config.l1, l2=config.l2,
                        l21=config.l21, jit_compile=bool(config.jit_compile))


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
