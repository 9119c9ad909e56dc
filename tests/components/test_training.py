"""components/training.py: the Trainer's compile step counts exactly the batches it trained on."""
import numpy as np
import pytest
import tensorflow as tf

from components import models, training
from components.trainer_config import TrainerConfig

FIELDS = ["C1", "C2", "C3"]


def _fit(dataset, optimizer, epochs=2):
    tf.keras.utils.set_random_seed(0)
    model = models.build_model("dnn", ["I1"], FIELDS, {f: 20 for f in FIELDS}, embedding_dim=4,
                               hidden_units=[8])
    training.compile_model(model, TrainerConfig(optimizer=optimizer, l21=1e-3), jit_compile=False)
    model.fit(dataset, epochs=epochs, verbose=0)
    return model


@pytest.mark.parametrize("optimizer", ["group_adam", "adam"])
def test_a_dataset_of_unknown_length_adds_no_step(optimizer):
    # Like the Trainer's tfxio datasets: the length is unknown, so the first epoch ends with a step
    # whose get_next fails; that step must change nothing (before: the step counter, and tf_keras
    # Adam's moments, moved once more than the batches trained).
    rng = np.random.RandomState(0)
    rows = 5 * 16 + 3  # 6 batches, the last partial
    features = {f: rng.randint(0, 20, rows).astype(np.int64) for f in FIELDS}
    features["I1"] = rng.rand(rows).astype(np.float32)
    labels = (rng.rand(rows) < 0.3).astype(np.float32)
    known = tf.data.Dataset.from_tensor_slices((features, labels)).batch(16)
    unknown = known.filter(lambda x, y: True)
    assert unknown.cardinality() == tf.data.UNKNOWN_CARDINALITY
    a, b = _fit(known, optimizer), _fit(unknown, optimizer)
    assert int(a.optimizer.iterations.numpy()) == int(b.optimizer.iterations.numpy()) == 12
    for x, y in zip(a.optimizer.variables(), b.optimizer.variables()):
        np.testing.assert_array_equal(x.numpy(), y.numpy(), err_msg=x.name)
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_array_equal(x.numpy(), y.numpy(), err_msg=x.name)
