"""benchmarks/trainer_run_bench.py: its input lookup, its previous sparsity control, its summary and the
committed run the README quotes."""
import json
import os

import pytest

from benchmarks import trainer_run_bench as bench


def test_a_folder_without_a_trainer_run_is_one_clear_error(tmp_path):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(tmp_path / "metadata.sqlite")
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    metadata_store.MetadataStore(config)
    with pytest.raises(SystemExit, match="no Trainer execution"):
        bench.trainer_inputs(str(tmp_path))


def test_a_folder_that_is_not_a_run_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no metadata.sqlite"):
        bench.trainer_inputs(str(tmp_path / "missing"))
    assert not (tmp_path / "missing").exists()


def test_summary_compares_the_medians():
    row = {"do_s": 10.0, "fit_s": 5.0, "saved_model_bytes": 1000.0}
    record = {"machine": "m", "run": "r", "load_before": [0], "load_after": [0], "repeats": 1,
              "median": {"current": dict(row, export_s=2.0), "previous_export": dict(row, export_s=8.0),
                         "per_table_control": dict(row, export_s=2.0, fit_s=7.5, do_s=12.5),
                         "eager_control": dict(row, export_s=2.0, fit_s=6.0, do_s=11.0),
                         "autotuned_input": dict(row, export_s=2.0, fit_s=9.0, do_s=14.0),
                         "autograph_input": dict(row, export_s=2.0, fit_s=5.5, do_s=16.0)},
              "runs": [{"reached": {"*": [0.95, 0.01]}, "variant": "current", "fit_s": 5.0},
                       {"reached": {"*": [0.95, 0.01]}, "variant": "autotuned_input", "fit_s": 4.5},
                       {"reached": {"*": [0.95, 0.01]}, "variant": "autotuned_input", "fit_s": 13.5}],
              "scored_examples": 5, "max_score_difference": 0.0}
    text = bench.text(record)
    assert "export: 4.00x faster (6.0 s less)" in text
    assert "sparsity control once per dtype: fit 2.5 s less (1.50x); Trainer Do 2.5 s less" in text
    assert "control's variables in one call: fit 1.0 s less (1.20x); Trainer Do 1.0 s less" in text
    assert "input without tf.data autotuning: fit 4.0 s less (1.80x); Trainer Do 4.0 s less" in text
    assert "fit s of each run, autotuned_input: 4.5, 13.5\n" in text
    assert "input functions without autograph: Trainer Do 6.0 s less (1.60x); fit 0.5 s less" in text
    assert ("versions of its parts (previous_export, per_table_control, eager_control, autotuned_input, "
            "autograph_input)") in text
    assert 'every run: {"*": [0.95, 0.01]}\n' in text  # one distinct result


def test_previous_table_state_is_the_current_one(tmp_path):
    """The reproduced per-table reading gives the same states as the current one, on a trained table."""
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    from components.sparsity_target import GLOBAL, SparsityTarget, Target
    from optim import GroupAdam
    inputs = keras.Input([2], dtype=tf.int64)
    embedded = keras.layers.Embedding(50, 4, name="embedding_C1")(inputs)
    embedded2 = keras.layers.Embedding(30, 4, name="embedding_C2")(inputs % 30)
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(keras.layers.Concatenate()([embedded, embedded2])))
    model = keras.Model(inputs, outputs)
    model.compile(GroupAdam(learning_rate=0.05, l21=0.01), loss="mse")
    rng = np.random.default_rng(0)
    model.fit(rng.integers(0, 50, [64, 2]), rng.normal(size=[64, 1]), epochs=2, verbose=0)
    callback = SparsityTarget({GLOBAL: Target(sparsity=0.5)})
    callback.set_model(model)
    current = callback.table_states(["C1", "C2"])
    previous = [bench._previous_table_state(callback, f) for f in ("C1", "C2")]
    assert all(len(state.critical) for state in current)  # rows stepped: their critical l21 are compared
    for a, b in zip(current, previous):
        np.testing.assert_array_equal(a.critical, b.critical)
        assert (a.zero, a.rows, a.row_bytes, a.fixed_kept) == (b.zero, b.rows, b.row_bytes, b.fixed_kept)


def test_the_autotuning_run_is_committed_and_quoted():
    with open(os.path.join(bench.REPO, "benchmarks", "results", "trainer_run_autotune.json")) as f:
        record = json.load(f)
    current, autotuned = record["median"]["current"], record["median"]["autotuned_input"]
    assert record["max_score_difference"] == 0  # the same model either way: only the waits differ
    with open(os.path.join(bench.REPO, "README.md")) as f:
        readme = " ".join(f.read().split())
    assert f"fitting {current['fit_s']:.1f} s against {autotuned['fit_s']:.1f} s with autotuning" in readme
    assert f"`Do` {current['do_s']:.1f} against {autotuned['do_s']:.1f} s, the same model" in readme


def test_the_autograph_variant_converts_the_mapped_functions_again(tmp_path, monkeypatch):
    """The variant undoes exactly the input's do_not_convert: the baseline it measures is real."""
    import tensorflow as tf
    from tensorflow.python.autograph.impl import api as autograph_api
    from tensorflow_metadata.proto.v0 import schema_pb2

    from components import training

    path = str(tmp_path / "examples.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for i in range(4):
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                training.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2])),
                "x": tf.train.Feature(float_list=tf.train.FloatList(value=[float(i)]))})).SerializeToString())
    schema = schema_pb2.Schema()
    for name, kind in ((training.LABEL_KEY, schema_pb2.INT), ("x", schema_pb2.FLOAT)):
        feature = schema.feature.add(name=name, type=kind)
        feature.shape.dim.add(size=1)
        feature.presence.min_fraction = 1.0
    converted = []
    convert = autograph_api._convert_actual
    monkeypatch.setattr(autograph_api, "_convert_actual",
                        lambda entity, *args: converted.append(entity.__name__) or convert(entity, *args))

    def built():
        converted.clear()
        batches = len(list(training.input_dataset([path], None, schema, 2, seed=0, shuffle=False)))
        return set(converted), batches

    assert built() == (set(), 2)
    monkeypatch.setattr(training, "tf", training.tf)  # both restored after the test
    monkeypatch.setattr(training, "check_finite_features", training.check_finite_features)
    bench._autograph_input()
    names, batches = built()
    assert batches == 2
    assert {"parse", "check_finite_features", "file_blocks"} <= names


@pytest.mark.parametrize("materialized", [True, False])
def test_eval_examples_are_examplegens_whichever_examples_the_trainer_read(tmp_path, materialized):
    import types

    import tensorflow as tf

    examplegen = tmp_path / "pipeline_root" / "ClickLogExampleGen" / "examples" / "3"
    (examplegen / "Split-eval").mkdir(parents=True)
    with tf.io.TFRecordWriter(str(examplegen / "Split-eval" / "data.gz"), options="GZIP") as writer:
        for i in range(3):
            writer.write(b"record %d" % i)
    transformed = tmp_path / "pipeline_root" / "Transform" / "transformed_examples" / "5"
    uri = str(transformed if materialized else examplegen)
    examples = bench.eval_examples({"examples": [types.SimpleNamespace(uri=uri)]}, limit=2)
    assert examples == [b"record 0", b"record 1"]


def test_a_run_without_examplegens_eval_split_is_one_clear_error(tmp_path):
    import types

    uri = str(tmp_path / "pipeline_root" / "Transform" / "transformed_examples" / "5")
    with pytest.raises(SystemExit, match="no eval split of ClickLogExampleGen"):
        bench.eval_examples({"examples": [types.SimpleNamespace(uri=uri)]})


def test_the_autograph_run_is_committed_and_quoted():
    with open(os.path.join(bench.REPO, "benchmarks", "results", "trainer_run_autograph.json")) as f:
        record = json.load(f)
    current, converted = record["median"]["current"], record["median"]["autograph_input"]
    assert record["max_score_difference"] == 0  # autograph changes how the input is built, not the batches
    with open(os.path.join(bench.REPO, "README.md")) as f:
        readme = " ".join(f.read().split())
    assert f"`Do` {current['do_s']:.1f} s against {converted['do_s']:.1f} s with autograph" in readme
    assert f"fitting {current['fit_s']:.1f} against {converted['fit_s']:.1f} s, the same model" in readme
