"""`run_fn` run by TFX's own Trainer executor on real artifacts (Transform output of generated rows):
a NaN loss stops training with no model, a seed gives the same model twice, and the three
signatures give the same scores."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from components.local_transform import analyze, transformed

ROWS = 2400
FAST = {"epochs": 1, "jit_compile": False, "hidden_units": [16]}


def _example(features, i):
    feature = {}
    for name, values in features.items():
        value = values[i]
        if values.dtype.kind == "f":
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))
        else:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Examples (transformed, train/eval splits), TransformGraph and Schema artifacts as Transform and
    SchemaGen write them, plus the raw eval rows."""
    import tensorflow_transform as tft
    from tfx.types import artifact_utils, standard_artifacts

    from components.click_log_example_gen.line_parser import LineParser
    from components.dataset_spec import load_spec
    from components.schema import curated_schema
    from pipelines import generator
    from tfx.utils import io_utils

    root = tmp_path_factory.mktemp("trainer")
    spec = load_spec("criteo")
    report = generator.generate(str(root / "data"), ROWS)
    parser = LineParser(spec)
    with open(report["path"]) as f:
        raw = [parser.parse(line).example for line in f.read().splitlines()]
    transform_dir = str(root / "transform_graph")
    analyze(spec, raw, transform_dir)
    features = transformed(tft.TFTransformOutput(transform_dir), raw)

    def artifacts(feature_overrides=None, raw_examples=False):
        """Transformed examples (with `feature_overrides`), or with `raw_examples` the raw rows they
        were transformed from (what ExampleGen writes: the Trainer's input without materialization)."""
        data = dict(features, **(feature_overrides or {}))
        name = "examples" if not feature_overrides else "examples-" + "-".join(sorted(feature_overrides))
        name = "raw-examples" if raw_examples else name
        examples = standard_artifacts.Examples()
        examples.uri = str(root / name)
        examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
        for split, rows in (("train", range(0, ROWS - 400)), ("eval", range(ROWS - 400, ROWS))):
            os.makedirs(os.path.join(examples.uri, f"Split-{split}"), exist_ok=True)
            with tf.io.TFRecordWriter(os.path.join(examples.uri, f"Split-{split}", "data.gz"),
                                      options="GZIP") as writer:
                for i in rows:
                    writer.write(raw[i] if raw_examples else _example(data, i))
        graph = standard_artifacts.TransformGraph()
        graph.uri = transform_dir
        schema = standard_artifacts.Schema()
        schema.uri = str(root / "schema")
        io_utils.write_pbtxt_file(os.path.join(schema.uri, "schema.pbtxt"), curated_schema(spec))
        return {"examples": [examples], "transform_graph": [graph], "schema": [schema]}

    return {"artifacts": artifacts, "spec": spec, "raw_eval": raw[ROWS - 400:], "features": features}


def _exec_properties(inputs, trainer=None):
    import dataclasses

    from tfx.proto import trainer_pb2
    from tfx.utils import proto_utils

    from pipelines.config import TrainerConfig

    cfg = dict(dataclasses.asdict(TrainerConfig()), **FAST)
    cfg.update(trainer or {})
    return {"run_fn": "components.trainer_module.run_fn",
            "train_args": proto_utils.proto_to_json(trainer_pb2.TrainArgs()),
            "eval_args": proto_utils.proto_to_json(trainer_pb2.EvalArgs()),
            "custom_config": json.dumps({"trainer": json.dumps(cfg), "dataset_spec": inputs["spec"].to_json()})}


def _train(inputs, out, trainer=None, feature_overrides=None, raw_examples=False):
    from tfx.components.trainer.executor import GenericExecutor
    from tfx.types import standard_artifacts

    model, model_run = standard_artifacts.Model(), standard_artifacts.ModelRun()
    model.uri, model_run.uri = str(out / "model"), str(out / "model_run")
    GenericExecutor().Do(inputs["artifacts"](feature_overrides, raw_examples=raw_examples),
                         {"model": [model], "model_run": [model_run]}, _exec_properties(inputs, trainer))
    return model.uri


@pytest.fixture(scope="module")
def trained(inputs, tmp_path_factory):
    return _train(inputs, tmp_path_factory.mktemp("first"))


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_feature_stops_training_and_exports_no_model(inputs, tmp_path, bad_value):
    """Caught in the input, not through the loss: what NaN does to the loss depends on the CPU (some
    AVX-512 max/ReLU kernels turn it into 0 and the loss stays finite)."""
    bad = inputs["features"]["I1"].copy()
    bad[::7] = bad_value  # a broken upstream feature
    # TFX imports the module file itself, so the class is compared by name.
    with pytest.raises(RuntimeError, match=r"^training stopped: transformed feature 'I1' holds NaN or Inf.*"
                                           r"No model was exported\.$") as raised:
        _train(inputs, tmp_path, feature_overrides={"I1": bad})
    assert type(raised.value).__name__ == "NonFiniteInputError"
    assert "\n" not in str(raised.value)
    assert not os.path.exists(tmp_path / "model" / "Format-Serving")
    assert not os.path.exists(tmp_path / "model" / "warm_start")


@pytest.mark.parametrize("change", ["shorter", "longer"])
def test_a_split_rewritten_while_training_stops_with_one_line(inputs, tmp_path, monkeypatch, change):
    """The Trainer counts each split's batches before fit (several steps per call need them). The train
    split rewritten right after its count: shorter, tf.data fails the epoch; longer, Keras would stop
    the epoch at the counted batches and leave the rest unread, so the files are checked after fit."""
    from components import distributed
    count = distributed.split_batches

    def count_then_rewrite(files, batch_size):
        batches = count(files, batch_size)
        if "Split-train" in files[0]:
            path = tf.io.gfile.glob(files[0])[0]
            records = [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
            with tf.io.TFRecordWriter(path, options="GZIP") as writer:
                for record in (records[:len(records) // 2] if change == "shorter" else records * 2):
                    writer.write(record)
        return batches

    monkeypatch.setattr(distributed, "split_batches", count_then_rewrite)
    detail = (r"\d+ batches counted before training, only \d+ read" if change == "shorter"
              else "their sizes or times differ from when their batches were counted")
    # A directory of its own (the override leaves I1 as it is): the rewrite touches no other test's data.
    with pytest.raises(RuntimeError, match=rf"^training stopped: a split's files changed while the Trainer read"
                                           rf" them \({detail}\);.*No model was exported\.$") as raised:
        _train(inputs, tmp_path, feature_overrides={"I1": inputs["features"]["I1"]})
    assert type(raised.value).__name__ == "SplitChangedError"
    assert "\n" not in str(raised.value)
    assert not os.path.exists(tmp_path / "model" / "Format-Serving")


def test_non_finite_weights_are_found_by_name():
    from components.trainer_module import non_finite_variables
    good = tf.Variable(tf.ones([4, 3]), name="good")
    bad = tf.Variable(tf.constant([[1.0, float("nan")], [0.0, 0.0]]), name="embedding_C1/embeddings")
    inf = tf.Variable(tf.constant([float("inf")]), name="dense/bias")
    ids = tf.Variable(tf.constant([1, 2], tf.int64), name="ids")
    assert non_finite_variables([good, bad, inf, ids]) == ["embedding_C1/embeddings:0", "dense/bias:0"]
    assert non_finite_variables([good, ids]) == []


def test_nan_loss_still_stops_training(inputs, tmp_path):
    """The loss guard stays for what the input check cannot see (a diverging learning rate)."""
    with pytest.raises(RuntimeError, match=r"No model was exported") as raised:
        _train(inputs, tmp_path, trainer={"learning_rate": 1e30, "optimizer": "adam"})
    assert type(raised.value).__name__ in ("NonFiniteLossError", "NonFiniteWeightsError")
    assert not os.path.exists(tmp_path / "model" / "Format-Serving")


def test_same_seed_gives_the_same_model(inputs, trained, tmp_path):
    again = _train(inputs, tmp_path)
    first = tf.train.load_checkpoint(os.path.join(trained, "warm_start", "state"))
    second = tf.train.load_checkpoint(os.path.join(again, "warm_start", "state"))
    names = sorted(first.get_variable_to_shape_map())
    assert names == sorted(second.get_variable_to_shape_map()) and len(names) > 10
    for name in names:
        np.testing.assert_array_equal(first.get_tensor(name), second.get_tensor(name), err_msg=name)
    a, b = (json.load(open(os.path.join(m, "training.json"))) for m in (trained, again))
    assert a["final"] == b["final"]
    # ... and a different seed does not (the test can fail).
    other = _train(inputs, tmp_path / "other", trainer={"seed": 7})
    third = tf.train.load_checkpoint(os.path.join(other, "warm_start", "state"))
    assert not np.array_equal(first.get_tensor("logit/kernel"), third.get_tensor("logit/kernel"))


def _split_pattern(artifacts, split):
    return [os.path.join(artifacts["examples"][0].uri, f"Split-{split}", "*")]


def test_raw_examples_are_told_apart_and_transformed_per_batch_as_transform_writes_them(inputs, monkeypatch):
    import tensorflow_transform as tft
    from tensorflow.python.autograph.impl import api as autograph_api

    from components.training import holds_raw_examples, input_dataset

    tft_output = tft.TFTransformOutput(inputs["artifacts"]()["transform_graph"][0].uri)
    transformed, raw = _split_pattern(inputs["artifacts"](), "eval"), _split_pattern(
        inputs["artifacts"](raw_examples=True), "eval")
    assert holds_raw_examples(raw, tft_output) and not holds_raw_examples(transformed, tft_output)
    schema = tft_output.transformed_metadata.schema
    converted = []
    convert = autograph_api._convert_actual
    monkeypatch.setattr(autograph_api, "_convert_actual",
                        lambda entity, *args: converted.append(entity) or convert(entity, *args))
    transformed_per_batch = input_dataset(raw, None, schema, 64, seed=0, shuffle=False, transform_output=tft_output)
    # Autograph converted nothing: on the transform layer's code it cost seconds of the Trainer's start.
    assert converted == []
    assert transformed_per_batch.options().autotune.enabled is False  # distributed.without_autotuning
    ours = list(transformed_per_batch)
    theirs = list(input_dataset(transformed, None, schema, 64, seed=0, shuffle=False))
    assert len(ours) == len(theirs) == 7  # 400 eval rows
    for (features, labels), (expected, expected_labels) in zip(ours, theirs):
        np.testing.assert_array_equal(labels.numpy(), expected_labels.numpy())
        assert sorted(features) == sorted(expected)
        for name, values in features.items():
            if values.dtype.is_floating:
                np.testing.assert_allclose(values.numpy(), expected[name].numpy(), rtol=1e-6, err_msg=name)
            else:
                np.testing.assert_array_equal(values.numpy(), expected[name].numpy(), err_msg=name)


def test_examples_neither_raw_nor_transformed_are_one_clear_error(inputs, tmp_path):
    import tensorflow_transform as tft

    from components.training import holds_raw_examples

    tft_output = tft.TFTransformOutput(inputs["artifacts"]()["transform_graph"][0].uri)
    path = str(tmp_path / "other.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        writer.write(tf.train.Example(features=tf.train.Features(feature={
            "label": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"yes"]))})).SerializeToString())
    with pytest.raises(ValueError, match="neither Transform's input nor its output"):
        holds_raw_examples([path], tft_output)


def test_run_fn_on_raw_examples_trains_the_model_of_the_transformed_ones(inputs, trained, tmp_path):
    # Transform without materialized output: the Trainer gets ExampleGen's examples and the graph.
    on_raw = _train(inputs, tmp_path, raw_examples=True)
    rows = tf.constant(inputs["raw_eval"][:200])
    scores = [tf.saved_model.load(os.path.join(m, "Format-Serving")).signatures["serving_default"](
        examples=rows)["probability"].numpy() for m in (trained, on_raw)]
    assert scores[0].std() > 1e-4
    # The same batches in the same order; the transform's float32 log1p may differ in the last bit
    # with a row's place in its batch, so the trajectories agree closely, not bit for bit.
    np.testing.assert_allclose(scores[1], scores[0], atol=1e-3)
    a, b = (json.load(open(os.path.join(m, "training.json"))) for m in (trained, on_raw))
    assert a["final"]["loss"] == pytest.approx(b["final"]["loss"], rel=1e-3)


def test_three_signatures_give_the_same_scores(inputs, trained):
    from components.preprocessing import LABEL_KEY
    loaded = tf.saved_model.load(os.path.join(trained, "Format-Serving"))
    rows = inputs["raw_eval"][:200]
    by_examples = loaded.signatures["serving_default"](examples=tf.constant(rows))["probability"].numpy()

    spec = inputs["spec"]
    parsed = [tf.train.Example.FromString(r).features.feature for r in rows]
    raw = {c: tf.constant([f[c].int64_list.value[0] if f[c].int64_list.value else 0 for f in parsed], tf.int64)
           for c in spec.int_columns}
    raw.update({c: tf.constant([f[c].bytes_list.value[0] if f[c].bytes_list.value else b"" for f in parsed])
                for c in spec.categorical_columns})
    by_raw = loaded.signatures["predict_raw"](**raw)["probability"].numpy()

    features = loaded.signatures["transform_features"](examples=tf.constant(rows))
    features = {k: v for k, v in features.items() if k != LABEL_KEY}
    # The SavedModel holds the signatures only (no Keras traces); the model itself is revived from
    # its config, as the Pusher revives it.
    from components.pruned_pusher.pruning import load_trained_model
    by_transformed = load_trained_model(os.path.join(trained, "Format-Serving"))(features).numpy()

    assert by_examples.shape == (200,) and by_examples.std() > 1e-4
    np.testing.assert_allclose(by_raw, by_examples, atol=1e-6)
    np.testing.assert_allclose(by_transformed, by_examples, atol=1e-6)


def test_training_report_and_warm_start_state_beside_the_model(trained):
    training = json.load(open(os.path.join(trained, "training.json")))
    assert training["warm_start"]["restored"] is False and training["warm_start"]["reason"] == "no pushed model yet"
    assert training["steps"] >= (ROWS - 400) // 256 and training["epochs"] == 1
    assert training["early_stopping"]["best_epoch"] == 1 and not training["early_stopping"]["restored_best"]
    assert set(training["history"]) >= {"loss", "auc", "val_loss", "val_auc"}
    meta = json.load(open(os.path.join(trained, "warm_start", "meta.json")))
    assert meta["model"] == "dnn" and meta["optimizer"] == "group_adam" and meta["steps"] == training["steps"]
    assert any(n.startswith("z/embedding_") for n in meta["variables"])  # Group Adam's dual is saved
    assert os.path.exists(os.path.join(trained, "warm_start", "vocabulary.txt"))
    sparsity = json.load(open(os.path.join(trained, "sparsity.json")))
    assert 0 <= sparsity["fraction"] <= 1 and len(sparsity["tables"]) == 26


def test_tensorboard_logs_loss_auc_and_sparsity(trained):
    run_dir = os.path.join(os.path.dirname(trained), "model_run")
    tags = set()
    for root, _, files in os.walk(run_dir):
        for name in files:
            if name.startswith("events.out.tfevents"):
                for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                    tags.update(v.tag for v in event.summary.value)
    assert {"epoch_loss", "epoch_auc", "embedding_row_sparsity", "embedding_row_sparsity/C1"} <= tags, tags


# TFX's Trainer executor in a fresh process whose one CPU is split into two logical devices (that
# must happen before TensorFlow initializes, so not in this test process).
_TWO_DEVICE_TRAINER = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tfx.components.trainer.executor import GenericExecutor
from google.protobuf import json_format
from ml_metadata.proto import metadata_store_pb2
from tfx.types import artifact_utils, standard_artifacts
args = json.loads(sys.argv[1])
inputs = {key: [artifact_utils.deserialize_artifact(
              json_format.ParseDict(a["artifact_type"], metadata_store_pb2.ArtifactType()),
              json_format.ParseDict(a["artifact"], metadata_store_pb2.Artifact()))]
          for key, a in args["inputs"].items()}
model, model_run = standard_artifacts.Model(), standard_artifacts.ModelRun()
model.uri, model_run.uri = args["out"] + "/model", args["out"] + "/model_run"
GenericExecutor().Do(inputs, {"model": [model], "model_run": [model_run]}, args["exec_properties"])
print(json.dumps({"imported": [m for m in ("tfx.v1", "google.cloud.aiplatform") if m in sys.modules]}))
"""


def test_mirrored_strategy_on_two_devices_trains_the_same_model(inputs, trained, tmp_path):
    import subprocess
    import sys

    from google.protobuf import json_format
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    artifacts = {key: {"artifact_type": json_format.MessageToDict(values[0].artifact_type),
                       "artifact": json_format.MessageToDict(values[0].mlmd_artifact)}
                 for key, values in inputs["artifacts"]().items()}
    args = {"inputs": artifacts, "out": str(tmp_path),
            "exec_properties": _exec_properties(inputs, {"distribution": "mirrored", "jit_compile": True})}
    done = subprocess.run([sys.executable, "-c", _TWO_DEVICE_TRAINER, json.dumps(args)], cwd=root,
                          env=dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="2"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # A Trainer pod (TFX's entrypoint, then run_fn's module) never imports tfx.v1: its Google Cloud
    # extensions took ~7 s to import, for a type annotation.
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"imported": []}
    model = str(tmp_path / "model")
    training = json.load(open(os.path.join(model, "training.json")))
    # Two replicas; jit_compile asked for but turned off (tf_keras cannot compile across replicas).
    assert training["distribution"] == {"strategy": "MirroredStrategy", "replicas": 2, "jit_compile": False}
    # Each replica took half of every batch: the summed gradients equal one device's, so the weights
    # and optimizer state match the single-device run of the same seed.
    single = tf.train.load_checkpoint(os.path.join(trained, "warm_start", "state"))
    mirrored = tf.train.load_checkpoint(os.path.join(model, "warm_start", "state"))
    names = sorted(single.get_variable_to_shape_map())
    assert names == sorted(mirrored.get_variable_to_shape_map())
    for name in names:
        np.testing.assert_allclose(mirrored.get_tensor(name), single.get_tensor(name), rtol=1e-3, atol=1e-5,
                                   err_msg=name)
    loaded = tf.saved_model.load(os.path.join(model, "Format-Serving"))
    scores = loaded.signatures["serving_default"](examples=tf.constant(inputs["raw_eval"][:50]))["probability"]
    assert np.all(np.isfinite(scores.numpy()))


def test_unknown_distribution_is_one_clear_error():
    from components.trainer_module import distribution_strategy
    with pytest.raises(ValueError, match="trainer.distribution 'tpu' not in"):
        distribution_strategy("tpu")


def test_auto_distribution_reads_tf_config(monkeypatch):
    from components import trainer_module
    monkeypatch.setenv("TF_CONFIG", "")
    assert trainer_module.distribution_strategy("auto").num_replicas_in_sync == 1
    made = []
    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", lambda: made.append(1) or "mwms")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1"]},
                                                "task": {"type": "chief", "index": 0}}))
    assert trainer_module.distribution_strategy("auto") == "mwms" and made == [1]


@pytest.mark.parametrize("cluster, task, chief", [
    ({"chief": ["c:1"], "worker": ["w0:1", "w1:1"]}, ("chief", 0), True),
    ({"chief": ["c:1"], "worker": ["w0:1", "w1:1"]}, ("worker", 0), False),
    ({"worker": ["w0:1", "w1:1"]}, ("worker", 0), True),
    ({"worker": ["w0:1", "w1:1"]}, ("worker", 1), False),
    ({}, (None, None), True),
])
def test_only_the_chief_writes_the_model(cluster, task, chief):
    from components.trainer_module import is_chief
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task[0], task_id=task[1])
    assert is_chief(resolver) is chief
    assert is_chief(None) is True


def test_keep_best_epoch_restores_weights_and_optimizer_state(tmp_path):
    """Epoch 1 is the best; epoch 2 is worse and stops training (patience 1); restoring brings back
    epoch 1's weights, Group Adam slots (the dual z included) and step counter."""
    import tf_keras as keras

    import optim
    from components.trainer_module import KeepBestEpoch

    keras.utils.set_random_seed(1)
    ids = keras.Input(shape=(), dtype=tf.int64, name="C1")
    table = keras.layers.Embedding(50, 4, name="embedding_C1")
    model = keras.Model(ids, tf.reduce_sum(keras.layers.Dense(1)(table(ids)), axis=1))
    model.compile(optimizer=optim.GroupAdam(0.05, l21=1e-3), loss="mse")
    x, y = np.arange(50) % 13, np.linspace(0, 1, 50).astype("float32")
    keep = KeepBestEpoch(str(tmp_path), patience=1)
    keep.set_model(model)

    model.fit(x, y, epochs=1, verbose=0)
    keep.on_epoch_end(0, {"val_auc": 0.8})
    best = [v.numpy().copy() for v in model.variables + model.optimizer.variables()]
    model.fit(x, y, epochs=2, verbose=0)
    keep.on_epoch_end(1, {"val_auc": 0.7})
    assert model.stop_training
    assert not np.array_equal(best[0], model.variables[0].numpy())
    assert keep.restore_best(last_epoch=1)
    after = [v.numpy() for v in model.variables + model.optimizer.variables()]
    # Group Adam's row_state slots hold its moments and its dual z.
    assert len(after) == len(best) and any("row_state" in v.name for v in model.optimizer.variables())
    for before, now in zip(best, after):
        np.testing.assert_array_equal(before, now)
    report = keep.report(1, True)
    assert report["best_epoch"] == 1 and report["restored_best"] and report["values"] == [0.8, 0.7]
    assert not keep.restore_best(last_epoch=0)  # the best epoch is the last: nothing to do


def test_keep_best_epoch_waits_patience_epochs(tmp_path):
    from components.trainer_module import KeepBestEpoch

    keep = KeepBestEpoch(str(tmp_path), patience=2)
    keep.model = type("M", (), {"stop_training": False})()
    keep.best_value, keep.best_epoch = 0.8, 0  # as after a snapshot at epoch 0
    keep.on_epoch_end(1, {"val_auc": 0.79})
    assert not keep.model.stop_training
    keep.on_epoch_end(2, {"val_auc": float("nan")})  # not a value: ignored
    assert not keep.model.stop_training
    keep.on_epoch_end(3, {"val_auc": 0.75})
    assert keep.model.stop_training
