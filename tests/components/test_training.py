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


class _Calls(tf.keras.callbacks.Callback):
    """The batch index Keras reports after each call into TensorFlow."""

    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(batch)


def _data(rows, seed=0):
    rng = np.random.RandomState(seed)
    features = {f: rng.randint(0, 20, rows).astype(np.int64) for f in FIELDS}
    features["I1"] = rng.rand(rows).astype(np.float32)
    labels = (rng.rand(rows) < 0.3).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((features, labels)).batch(16)


def _fit_calls(dataset, steps_per_execution, validation=None, epochs=2, callbacks=()):
    tf.keras.utils.set_random_seed(0)
    model = models.build_model("dnn", ["I1"], FIELDS, {f: 20 for f in FIELDS}, embedding_dim=4,
                               hidden_units=[8])
    config = TrainerConfig(optimizer="group_adam", l21=1e-3, steps_per_execution=steps_per_execution)
    training.compile_model(model, config, jit_compile=False)
    calls = _Calls()
    history = model.fit(dataset, epochs=epochs, validation_data=validation, verbose=0,
                        callbacks=[calls, *callbacks])
    return model, calls.ends, history.history


def test_several_steps_per_call_train_the_same_model():
    train, validation = _data(5 * 16 + 3), _data(40, seed=1)  # 6 and 3 batches, the last ones partial
    one, one_calls, one_history = _fit_calls(train, 1, validation)
    four, four_calls, four_history = _fit_calls(train, 4, validation)
    assert one_calls == [0, 1, 2, 3, 4, 5] * 2
    assert four_calls == [3, 5] * 2  # 4 steps, then the epoch's 2 left
    assert int(one.optimizer.iterations.numpy()) == int(four.optimizer.iterations.numpy()) == 12
    for x, y in zip(one.weights + one.optimizer.variables(), four.weights + four.optimizer.variables()):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-6, atol=1e-7, err_msg=x.name)
    np.testing.assert_allclose(one_history["val_auc"], four_history["val_auc"], rtol=1e-6)
    assert int(four.steps_per_execution.numpy()) == 1  # evaluate and predict after fit: one step per call


def test_a_fit_over_data_of_unknown_length_runs_one_step_per_call():
    # Keras refuses several steps per call there (it would learn the epoch's length in whole calls).
    unknown = _data(5 * 16 + 3).filter(lambda x, y: True)
    model, calls, _ = _fit_calls(unknown, 4)
    assert calls == [0, 1, 2, 3, 4, 5] * 2
    assert int(model.optimizer.iterations.numpy()) == 12


def test_a_callback_acting_between_calls_limits_the_steps_per_call():
    class EveryTwoSteps(tf.keras.callbacks.Callback):
        def max_steps_per_execution(self):
            return 2

    _, calls, _ = _fit_calls(_data(5 * 16 + 3), 4, epochs=1, callbacks=[EveryTwoSteps()])
    assert calls == [1, 3, 5]


@pytest.mark.parametrize("jit_compile", [False, True], ids=["xla_off", "xla_on"])
def test_the_train_step_is_traced_once(monkeypatch, jit_compile):
    # The first epoch's cost is mostly tracing (benchmarks/trainer_bench.py, first epoch s): the
    # optimizer's slots made inside the first trace, and Keras' loop of steps traced twice, each
    # traced the whole step again.
    traces = []
    keras_train_step = tf.keras.Model.train_step

    def counted_train_step(self, data):
        traces.append(data)
        return keras_train_step(self, data)

    monkeypatch.setattr(tf.keras.Model, "train_step", counted_train_step)
    tf.keras.utils.set_random_seed(0)
    model = models.build_model("dnn", ["I1"], FIELDS, {f: 20 for f in FIELDS}, embedding_dim=4,
                               hidden_units=[8])
    config = TrainerConfig(optimizer="group_adam", l21=1e-3, steps_per_execution=4)
    training.compile_model(model, config, jit_compile=jit_compile)
    assert len(model.optimizer.variables()) > 1  # slots made before fit
    model.fit(_data(5 * 16 + 3), epochs=2, validation_data=_data(40, seed=1), verbose=0)
    assert len(traces) == 1
    assert int(model.optimizer.iterations.numpy()) == 12


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


def _write_transformed_examples(split_dir, files, rows_per_file):
    """Gzipped TFRecords of transformed-looking tf.Examples (int ids, a float, the label); returns
    their schema. The id C1 is unique per example, so examples can be matched across readers."""
    from tensorflow_transform.tf_metadata import schema_utils

    feature_spec = {"C1": tf.io.FixedLenFeature([], tf.int64), "C2": tf.io.FixedLenFeature([], tf.int64),
                    "I1": tf.io.FixedLenFeature([], tf.float32),
                    training.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    for f in range(files):
        path = split_dir / f"transformed_examples-{f:05d}-of-{files:05d}.gz"
        with tf.io.TFRecordWriter(str(path), options) as writer:
            for i in range(rows_per_file):
                key = f * rows_per_file + i
                feature = {"C1": tf.train.Feature(int64_list=tf.train.Int64List(value=[key])),
                           "C2": tf.train.Feature(int64_list=tf.train.Int64List(value=[key % 7])),
                           "I1": tf.train.Feature(float_list=tf.train.FloatList(value=[key * 0.5])),
                           training.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[key % 2]))}
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return schema_utils.schema_from_feature_spec(feature_spec)


def _data_accessor(root):
    """What TFX's Trainer hands run_fn as fn_args.data_accessor (fn_args_utils.get_data_accessor)."""
    from tfx.components.trainer import fn_args_utils
    from tfx.components.util import tfxio_utils
    from tfx.types import standard_artifacts

    artifact = standard_artifacts.Examples()
    artifact.uri = str(root)
    artifact.split_names = '["train"]'
    return fn_args_utils.DataAccessor(
        tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact([artifact], []),
        record_batch_factory=None, data_view_decode_fn=None)


def _by_key(dataset):
    """{C1: (features, label)} of every example of `dataset`, and the batch sizes."""
    examples, sizes = {}, []
    for features, label in dataset:
        sizes.append(int(label.shape[0]))
        columns = {name: value.numpy() for name, value in features.items()}
        for row, key in enumerate(columns["C1"]):
            examples[int(key)] = ({name: value[row] for name, value in columns.items()}, int(label[row]))
    return examples, sizes


@pytest.mark.parametrize("shuffle", [False, True])
def test_input_dataset_gives_the_examples_and_tensors_of_tfxs_data_accessor(tmp_path, shuffle):
    split = tmp_path / "Split-train"
    split.mkdir()
    schema = _write_transformed_examples(split, files=3, rows_per_file=300)
    pattern = [str(split / "*")]
    accessor = _data_accessor(tmp_path)
    # The Trainer's reader reads the files itself (tfx_bsl's reads them record by record).
    unused = accessor._replace(tf_dataset_factory=None)
    ours = training.input_dataset(pattern, unused, schema, batch_size=64, seed=3, shuffle=shuffle)
    tfx_reader = accessor.tf_dataset_factory(pattern, training.tfxio.TensorFlowDatasetOptions(
        batch_size=64, label_key=training.LABEL_KEY, num_epochs=1, shuffle=shuffle, shuffle_seed=3,
        drop_final_batch=False), schema)

    assert ours.element_spec == tfx_reader.element_spec
    got, got_sizes = _by_key(ours)
    expected, expected_sizes = _by_key(tfx_reader)
    assert sorted(got) == list(range(900))
    assert got.keys() == expected.keys()
    for key, (features, label) in expected.items():
        assert label == got[key][1]
        for name, value in features.items():
            assert value == got[key][0][name], (key, name)
    assert got_sizes == expected_sizes == [64] * 14 + [4]  # the last, short batch kept
    if shuffle:  # shuffled across files and within them, the same way for the same seed
        first = [int(f["C1"][0]) for f, _ in training.input_dataset(pattern, accessor, schema, 64, 3, True)]
        again = [int(f["C1"][0]) for f, _ in training.input_dataset(pattern, accessor, schema, 64, 3, True)]
        assert first == again
        assert first != sorted(first)


def test_input_datasets_run_without_tf_data_autotuning(tmp_path):
    """Deleting an autotuned iterator waits for its tuning thread, up to seconds at random; Keras
    deletes the splits' iterators every epoch (components.distributed.without_autotuning)."""
    split = tmp_path / "Split-train"
    split.mkdir()
    schema = _write_transformed_examples(split, files=1, rows_per_file=10)
    accessor = _data_accessor(tmp_path)
    plain = training.input_dataset([str(split / "*")], accessor, schema, 4, 0, True)
    schema.tensor_representation_group[""].tensor_representation["C1"].dense_tensor.column_name = "C1"
    through_accessor = training.input_dataset([str(split / "*")], accessor, schema, 4, 0, True)
    for dataset in (plain, through_accessor):
        assert dataset.options().autotune.enabled is False
        assert sum(int(label.shape[0]) for _, label in dataset) == 10
    assert tf.data.Dataset.range(3).options().autotune.enabled is not False  # the test can fail


def test_input_dataset_with_tensor_representations_reads_through_the_data_accessor(tmp_path):
    split = tmp_path / "Split-train"
    split.mkdir()
    schema = _write_transformed_examples(split, files=1, rows_per_file=10)
    schema.tensor_representation_group[""].tensor_representation["C1"].dense_tensor.column_name = "C1"
    calls = []
    accessor = _data_accessor(tmp_path)
    factory = accessor.tf_dataset_factory
    accessor = accessor._replace(tf_dataset_factory=lambda *args: calls.append(args) or factory(*args))
    features, label = next(iter(training.input_dataset([str(split / "*")], accessor, schema, 4, 0, False)))
    assert len(calls) == 1 and sorted(features) == ["C1", "C2", "I1"] and label.shape == (4,)
