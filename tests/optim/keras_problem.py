"""A tiny CTR-like Keras problem shared by the training tests (and the MirroredStrategy subprocess).

Two categorical fields of ROWS ids each: field "a" decides the label (id < ROWS/2 -> mostly 1),
field "b" is noise. A good group-lasso run keeps the rows of "a" and prunes most rows of "b".
"""

import numpy as np
import tensorflow as tf
import tf_keras

ROWS, DIM = 40, 4


def make_data(n=2048, seed=0):
    rng = np.random.RandomState(seed)
    a = rng.randint(0, ROWS, n)
    b = rng.randint(0, ROWS, n)
    p = np.where(a < ROWS // 2, 0.95, 0.05)
    y = (rng.rand(n) < p).astype(np.float32)
    return {"a": a.astype(np.int64), "b": b.astype(np.int64)}, y


class PlainLossModel(tf_keras.Model):
    """A functional model whose train_step computes the loss directly.

    Keras's own train_step goes through its compiled-loss container, which autograph converts on
    the first fit of every process (15-45 s on the 2-core CI machine, most of this suite's time).
    The optimizer path is the standard one: optimizer.minimize(loss, variables, tape) inside the
    jit-compiled step of model.compile(jit_compile=...).
    """

    @tf.autograph.experimental.do_not_convert
    def train_step(self, data):
        features, labels = data
        with tf.GradientTape() as tape:
            probabilities = self(features, training=True)
            # Mean over the global batch: under a distribution strategy the gradients of the
            # replicas are summed, as with Keras's own loss container.
            loss = tf.nn.compute_average_loss(
                tf_keras.losses.binary_crossentropy(labels[:, None], probabilities)
            )
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        return {"loss": loss}


def accuracy(model, features, labels):
    return float(np.mean((model(features).numpy()[:, 0] > 0.5) == (labels > 0.5)))


def make_model(seed=0):
    tf_keras.utils.set_random_seed(seed)
    inputs = {f: tf_keras.Input((), dtype="int64", name=f) for f in ("a", "b")}
    init = tf_keras.initializers.RandomUniform(-0.05, 0.05, seed=seed)
    embedded = [
        tf_keras.layers.Embedding(ROWS, DIM, embeddings_initializer=init, name=f"embedding_{f}")(
            inputs[f]
        )
        for f in ("a", "b")
    ]
    hidden = tf_keras.layers.Concatenate()(embedded)
    output = tf_keras.layers.Dense(
        1, activation="sigmoid", kernel_initializer=tf_keras.initializers.Constant(0.5)
    )(hidden)
    return PlainLossModel(inputs, output)
