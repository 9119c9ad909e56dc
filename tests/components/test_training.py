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


def test_relative_embedding_adds_the_oov_row_to_known_values():
    """A known value's vector is its row plus the OOV row, an unseen value's the OOV row; the table's
    gradient stays row-sparse (the batch's rows and the OOV row)."""
    import numpy as np
    import tensorflow as tf

    from components.models import RelativeEmbedding
    layer = RelativeEmbedding(5, 3, oov_row=4)
    layer.build([None])
    table = np.arange(15, dtype=np.float32).reshape(5, 3)
    table[1] = 0.0
    layer.set_weights([table])
    ids = tf.constant([0, 1, 4, 2], tf.int64)
    np.testing.assert_array_equal(layer(ids).numpy(), [table[0] + table[4], table[4], table[4], table[2] + table[4]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(ids))
    grad = tape.gradient(loss, layer.embeddings)
    assert isinstance(grad, tf.IndexedSlices)
    dense = tf.convert_to_tensor(grad).numpy()
    assert dense[3].tolist() == [0, 0, 0]  # a row not in the batch
    assert dense[4].tolist() == [4, 4, 4]  # the OOV row: the 3 known ids through the base, the unseen one itself
    assert RelativeEmbedding.from_config(layer.get_config()).oov_row == 4


def test_rows_relative_to_oov_builds_relative_tables_and_its_own_warm_start_kind():
    import dataclasses

    from components import models, training
    from components.trainer_config import TrainerConfig
    config = TrainerConfig()
    relative = dataclasses.replace(config, rows_relative_to_oov=True)
    assert training.model_kind(config) == "dnn" and training.model_kind(relative) == "dnn/rows-relative-to-oov"
    model = models.build_model("dnn", ["I1"], ["C1", "C2"], {"C1": 4, "C2": 7}, global_to_row=[0, 1, 0],
                               oov_rows={"C1": 2}, rows_relative_to_oov=True)
    assert isinstance(model.get_layer("embedding_C1"), models.RelativeEmbedding)
    assert type(model.get_layer("embedding_C2")).__name__ == "Embedding"  # not a vocabulary field
