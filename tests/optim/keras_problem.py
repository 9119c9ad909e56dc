"""A tiny CTR-like Keras problem shared by the training tests (and the MirroredStrategy subprocess).

Two categorical fields of ROWS ids each: field "a" decides the label (id < ROWS/2 -> mostly 1),
field "b" is noise. A good group-lasso run keeps the rows of "a" and prunes most rows of "b".
"""

import numpy as np
import tf_keras

ROWS, DIM = 40, 4


def make_data(n=2048, seed=0):
    rng = np.random.RandomState(seed)
    a = rng.randint(0, ROWS, n)
    b = rng.randint(0, ROWS, n)
    p = np.where(a < ROWS // 2, 0.95, 0.05)
    y = (rng.rand(n) < p).astype(np.float32)
    return {"a": a.astype(np.int64), "b": b.astype(np.int64)}, y


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
    return tf_keras.Model(inputs, output)
