"""PrunedPusher on a real model: generated Criteo-layout rows -> ExampleGen's parser -> TF Transform
(Beam, in memory) -> the project's DNN trained with Group Adam -> exported exactly like the Trainer
(``export_signatures`` + ``model.save``) -> pushed by the real TFX executor. Built once per module."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from components.pruned_pusher import pruning
from components.local_transform import analyze

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_NAME = "ctr"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A Trainer-layout Model artifact trained with Group Adam, its Transform output and eval rows."""
    import tensorflow_transform as tft
    import tf_keras as keras

    import optim
    from components import models
    from components.click_log_example_gen.line_parser import LineParser
    from components.dataset_spec import DatasetSpec, load_spec
    from components.preprocessing import LABEL_KEY
    from components.export_signatures import signatures as _signatures
    from components.vocabulary import FieldVocabulary
    from pipelines.generator import generate

    root = tmp_path_factory.mktemp("trained")
    # The Criteo layout with fewer features read (the others are `ignore` columns): the same code
    # paths, a quarter of the graph to trace and save.
    kept = {"label", "I1", "I2", "I3", "I4", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8"}
    criteo = load_spec("criteo").to_dict()
    criteo["columns"] = [c if c["name"] in kept else {"name": c["name"], "kind": "ignore"}
                         for c in criteo["columns"]]
    criteo["frequency_threshold"] = 1  # every seen value gets a row: tables large enough to weigh
    spec = DatasetSpec.from_dict(criteo, source="criteo-small")
    data = generate(str(root / "data"), rows=1600)
    parser = LineParser(spec)
    with open(data["path"]) as f:
        serialized = [parser.parse(line).example for line in f.read().splitlines()]
    train_rows, eval_rows = serialized[:1300], serialized[1300:]

    transform_dir = str(root / "transform_graph")
    analyze(spec, train_rows, transform_dir)
    tft_output = tft.TFTransformOutput(transform_dir)
    transformed = tft_output.transform_features_layer()(
        tf.io.parse_example(tf.constant(train_rows), tft_output.raw_feature_spec()))
    labels = transformed.pop(LABEL_KEY)

    keras.utils.set_random_seed(0)
    vocabulary = FieldVocabulary(spec, tft_output)
    model = models.build_model("dnn", spec.int_columns, vocabulary.embedded_fields, vocabulary.table_rows(),
                               embedding_dim=32, hidden_units=(16,), global_to_row=vocabulary.global_to_row,
                               oov_rows={f: vocabulary.oov_row(f) for f in vocabulary.fields})
    model.compile(optimizer=optim.GroupAdam(learning_rate=0.01, l21=3e-4), loss="binary_crossentropy")
    model.fit(dict(transformed), labels, batch_size=64, epochs=2, verbose=0)

    model_uri = str(root / "model")
    model.save(os.path.join(model_uri, "Format-Serving"), save_format="tf",
               signatures=_signatures(model, tft_output, spec))

    examples_uri = str(root / "examples")
    os.makedirs(os.path.join(examples_uri, "Split-eval"))
    with tf.io.TFRecordWriter(os.path.join(examples_uri, "Split-eval", "data_tfrecord-00000-of-00001.gz"),
                              options="GZIP") as writer:
        for row in eval_rows:
            writer.write(row)
    sparsity = optim.sparsity(models.embedding_tables(model))
    assert 0.2 < sparsity["fraction"] < 0.99, sparsity  # Group Adam pruned rows, not all of them
    return {"model_uri": model_uri, "transform_dir": transform_dir, "examples_uri": examples_uri,
            "eval_rows": eval_rows, "sparsity": sparsity}


def _artifacts(trained, out_root, blessed=True):
    from tfx.types import artifact_utils, standard_artifacts
    model = standard_artifacts.Model()
    model.uri = trained["model_uri"]
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = os.path.join(out_root, "blessing")
    blessing.set_int_custom_property("blessed", 1 if blessed else 0)
    examples = standard_artifacts.Examples()
    examples.uri = trained["examples_uri"]
    examples.split_names = artifact_utils.encode_split_names(["eval"])
    transform_graph = standard_artifacts.TransformGraph()
    transform_graph.uri = trained["transform_dir"]
    pushed = standard_artifacts.PushedModel()
    pushed.uri = os.path.join(out_root, "pushed_model")
    inputs = {"model": [model], "model_blessing": [blessing], "examples": [examples],
              "transform_graph": [transform_graph]}
    return inputs, {"pushed_model": [pushed]}, pushed


def _run_executor(trained, base_dir, out_root, blessed=True, **params):
    from tfx.proto import pusher_pb2
    from tfx.utils import proto_utils

    from components.pruned_pusher.executor import Executor
    inputs, outputs, pushed = _artifacts(trained, out_root, blessed)
    destination = pusher_pb2.PushDestination(
        filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=base_dir))
    exec_properties = {"push_destination": proto_utils.proto_to_json(destination), "model_name": MODEL_NAME,
                       "keep_versions": 3, "parity_tolerance": 1e-6, "parity_examples": 1000,
                       "warmup_requests": 50, "examples_split": "eval", **params}
    Executor().Do(inputs, outputs, exec_properties)
    return pushed


@pytest.fixture(scope="module")
def pushed(trained, tmp_path_factory):
    root = tmp_path_factory.mktemp("push")
    base = str(root / "serving")
    artifact = _run_executor(trained, base, str(root))
    return {"artifact": artifact, "base": base, "root": root}


def test_push_writes_a_pruned_version_with_the_measured_properties(trained, pushed):
    artifact, base = pushed["artifact"], pushed["base"]
    props = {k: artifact.get_custom_property(k) for k in artifact.mlmd_artifact.custom_properties}
    assert props["pushed"] == 1
    version_dir = props["pushed_destination"]
    assert os.path.dirname(version_dir) == os.path.join(base, MODEL_NAME)
    assert os.path.basename(version_dir) == props["pushed_version"] and props["pushed_version"].isdigit()
    for name in ("saved_model.pb", "variables/variables.index", "assets.extra/tf_serving_warmup_requests"):
        assert os.path.exists(os.path.join(version_dir, name)), name
    assert [n for n in os.listdir(os.path.join(base, MODEL_NAME))] == [props["pushed_version"]]  # no temp dir left
    assert props["parity_max_abs_error"] <= 1e-6

    # Every table here is a vocabulary field's: each is compacted with the vocabulary (no row maps),
    # and the embedding bytes shrink by exactly its zero rows less the one zero row it keeps.
    sparsity = trained["sparsity"]
    assert props["row_sparsity"] == pytest.approx(sparsity["fraction"])
    assert props["embedding_bytes_before"] == sparsity["rows"] * 32 * 4
    tables = sparsity["tables"]
    assert props["compacted_tables"] == len(tables) == 8
    assert props["embedding_rows_dropped"] == sum(t["zero_rows"] for t in tables.values())
    removed = props["embedding_bytes_before"] - props["embedding_bytes_after"]
    assert removed == sum(t["zero_rows"] - 1 for t in tables.values()) * 128
    assert props["id_map_bytes"] == 0
    # The pushed vocabulary: the trained one less the values whose rows (and OOV row) are zero.
    vocabulary = lambda d: open(os.path.join(d, "assets", "categorical"), "rb").read().splitlines()  # noqa: E731
    trained_lines = vocabulary(os.path.join(trained["model_uri"], "Format-Serving"))
    assert props["vocabulary_lines"] == len(trained_lines)
    pushed_lines = vocabulary(version_dir)
    assert os.listdir(os.path.join(version_dir, "assets")) == ["categorical"]  # not the trained one as well
    assert props["vocabulary_lines_kept"] == len(pushed_lines) <= len(trained_lines)
    assert pushed_lines == [line for line in trained_lines if line in set(pushed_lines)]  # same order
    # ... and the SavedModel by more: the Trainer's SavedModel here also holds Group Adam's slots.
    assert props["size_after_bytes"] < props["size_before_bytes"] - removed
    variables = lambda d: pruning.dir_size(os.path.join(d, "variables"))  # noqa: E731
    assert variables(version_dir) < variables(os.path.join(trained["model_uri"], "Format-Serving")) - removed
    # The archived copy under the artifact uri, like TFX's Pusher.
    assert os.path.exists(os.path.join(artifact.uri, "saved_model.pb"))


def test_saved_model_shrinks_by_the_dropped_rows_against_the_same_export_unpruned(trained, pushed, tmp_path):
    # Like for like: the same export (same signatures, no layer traces, no optimizer state) with
    # the full tables and vocabulary. The served model is smaller by the zero rows, the dropped
    # vocabulary lines and their 8-byte entries of the global id map.
    artifact = pushed["artifact"]
    props = {k: artifact.get_custom_property(k) for k in artifact.mlmd_artifact.custom_properties}
    unpruned = str(tmp_path / "unpruned")
    report = pruning.export_pruned(os.path.join(trained["model_uri"], "Format-Serving"), trained["transform_dir"],
                                   unpruned, prune=False)
    assert report.vocabulary is None and report.vocabulary_lines_kept == report.vocabulary_lines == 0
    removed = props["embedding_bytes_before"] - props["embedding_bytes_after"]
    dropped_lines = props["vocabulary_lines"] - props["vocabulary_lines_kept"]
    variables = lambda d: pruning.dir_size(os.path.join(d, "variables"))  # noqa: E731
    assets = lambda d: pruning.dir_size(os.path.join(d, "assets"))  # noqa: E731
    version_dir = props["pushed_destination"]
    assert variables(unpruned) - variables(version_dir) == pytest.approx(removed + 8 * dropped_lines, rel=0.02)
    vocabulary = lambda d: open(os.path.join(d, "assets", "categorical"), "rb").read().splitlines()  # noqa: E731
    dropped = set(vocabulary(unpruned)) - set(vocabulary(version_dir))
    assert len(dropped) == dropped_lines
    assert assets(unpruned) - assets(version_dir) == sum(len(line) + 1 for line in dropped)
    # The lookups' ops and the layers' configs: a fixed cost per compacted table, whatever its rows.
    graph = lambda d: sum(os.path.getsize(os.path.join(d, name))  # noqa: E731
                          for name in ("saved_model.pb", "keras_metadata.pb"))
    graph_growth = graph(version_dir) - graph(unpruned)
    assert abs(graph_growth) < pruning.MIN_COMPACT_BYTES * props["compacted_tables"], graph_growth
    whole = pruning.dir_size(unpruned) - props["size_after_bytes"]
    expected = removed + 8 * dropped_lines + assets(unpruned) - assets(version_dir) - graph_growth
    assert whole == pytest.approx(expected, rel=0.02, abs=2048)


def test_pushed_model_keeps_the_three_signatures_and_scores_like_the_trained_model(trained, pushed):
    version_dir = pushed["artifact"].get_string_custom_property("pushed_destination")
    trained_dir = os.path.join(trained["model_uri"], "Format-Serving")
    before, after = tf.saved_model.load(trained_dir), tf.saved_model.load(version_dir)
    assert set(after.signatures) == set(before.signatures) == {"serving_default", "predict_raw", "transform_features"}
    for name in before.signatures:
        assert (after.signatures[name].structured_input_signature == before.signatures[name].structured_input_signature)
        assert set(after.signatures[name].structured_outputs) == set(before.signatures[name].structured_outputs)
    rows = trained["eval_rows"]
    error = np.max(np.abs(pruning.score_examples(trained_dir, rows) - pruning.score_examples(version_dir, rows)))
    assert error <= 1e-6
    # The pruned graph really holds compact tables: the non-zero rows (plus one zero row) of each
    # compacted table.
    def table_rows(loaded):
        # The serving signature's variables (the pushed model is saved without Keras' attributes).
        return {v.name.split("/")[0][len("embedding_"):]: int(v.shape[0])
                for v in loaded.signatures["serving_default"].variables
                if v.name.startswith("embedding_C") and v.name.endswith("/embeddings:0") and v.shape.rank == 2}
    props = pushed["artifact"].mlmd_artifact.custom_properties
    tables = trained["sparsity"]["tables"]
    assert table_rows(before) == {f: t["rows"] for f, t in tables.items()}
    assert props["compacted_tables"].int_value == len(tables) == 8
    assert table_rows(after) == {f: t["rows"] - t["zero_rows"] + 1 for f, t in tables.items()}


def test_pushed_model_holds_the_signatures_and_no_layer_traces(trained, pushed):
    # Every function a server revives costs it memory (~50 MB per version at 1.3M rows): the pushed
    # SavedModel holds the signatures' functions, not each Keras layer's call traces as the Trainer's.
    from tensorflow.core.protobuf import saved_model_pb2

    def functions(saved_model_dir):
        saved_model = saved_model_pb2.SavedModel()
        with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
            saved_model.ParseFromString(f.read())
        return [f.signature.name for f in saved_model.meta_graphs[0].graph_def.library.function]

    version_dir = pushed["artifact"].get_string_custom_property("pushed_destination")
    trained_functions = functions(os.path.join(trained["model_uri"], "Format-Serving"))
    pushed_functions = functions(version_dir)
    assert any("layer_call" in name for name in trained_functions)
    assert not [name for name in pushed_functions if "layer_call" in name]
    assert len(pushed_functions) < len(trained_functions) / 3


def test_warmup_records_are_prediction_logs_the_signature_accepts(trained, pushed):
    from tensorflow_serving.apis import prediction_log_pb2
    version_dir = pushed["artifact"].get_string_custom_property("pushed_destination")
    path = os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests")
    records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    assert len(records) == pushed["artifact"].get_int_custom_property("warmup_requests") == 50
    signature = tf.saved_model.load(version_dir).signatures["serving_default"]
    for record in records[:10]:
        log = prediction_log_pb2.PredictionLog.FromString(record)
        request = log.predict_log.request
        assert request.model_spec.name == MODEL_NAME and request.model_spec.signature_name == "serving_default"
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        probability = signature(**{k: tf.constant(v) for k, v in inputs.items()})["probability"].numpy()
        assert probability.shape == (1,) and 0 < probability[0] < 1


def test_models_config_points_at_the_model_dir(pushed):
    from serving.tf_serving_config import read_model_config
    config = read_model_config(os.path.join(pushed["base"], "models.config"))
    (entry,) = config.model_config_list.config
    assert entry.name == MODEL_NAME and entry.base_path == os.path.join(os.path.abspath(pushed["base"]), MODEL_NAME)


def test_not_blessed_pushes_nothing(trained, tmp_path):
    base = str(tmp_path / "serving")
    artifact = _run_executor(trained, base, str(tmp_path), blessed=False)
    assert artifact.get_int_custom_property("pushed") == 0
    assert not os.path.exists(base)


def test_examples_that_are_not_tf_example_tfrecords_fail_with_one_line_and_push_nothing(trained, tmp_path):
    # TFX's Parquet payload (e.g. a Parquet ExampleGen wired in): requests need serialized tf.Examples.
    from tfx.components.util import examples_utils
    from tfx.proto import example_gen_pb2, pusher_pb2
    from tfx.utils import proto_utils

    from components.pruned_pusher.executor import Executor

    inputs, outputs, pushed = _artifacts(trained, str(tmp_path))
    examples_utils.set_payload_format(inputs["examples"][0], example_gen_pb2.PayloadFormat.FORMAT_PARQUET)
    examples_utils.set_file_format(inputs["examples"][0], "parquet")
    base = str(tmp_path / "serving")
    destination = pusher_pb2.PushDestination(filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=base))
    with pytest.raises(ValueError, match=r"FORMAT_PARQUET in parquet files; serving requests are built from "
                                         r"tf\.Examples in gzipped TFRecords"):
        Executor().Do(inputs, outputs, {"push_destination": proto_utils.proto_to_json(destination),
                                        "model_name": MODEL_NAME, "keep_versions": 3, "parity_tolerance": 1e-6,
                                        "parity_examples": 1000, "warmup_requests": 50, "examples_split": "eval"})
    assert not os.path.exists(base)


def test_parity_failure_names_the_measured_error(trained, pushed, tmp_path):
    # A pruned model that scores differently: the pushed one with one kept row of a table changed.
    version_dir = pushed["artifact"].get_string_custom_property("pushed_destination")
    trained_dir = os.path.join(trained["model_uri"], "Format-Serving")
    off = tf.saved_model.load(version_dir)
    table = next(v for v in off.signatures["serving_default"].variables
                 if v.name.endswith("/embeddings:0") and v.shape[0] > 0)
    table.assign(table + 0.5)
    off_dir = str(tmp_path / "off")
    tf.saved_model.save(off, off_dir, signatures=dict(off.signatures))
    rows = trained["eval_rows"][:100]
    measured = float(np.max(np.abs(pruning.score_examples(trained_dir, rows) - pruning.score_examples(off_dir, rows))))
    assert measured > 1e-6
    with pytest.raises(pruning.ParityError, match=rf"max \|Δprobability\| = {measured:.3g} > tolerance 1e-06"):
        pruning.check_parity(trained_dir, off_dir, rows, tolerance=1e-6)
    assert pruning.check_parity(trained_dir, version_dir, rows, tolerance=1e-6) <= 1e-6
    # The same check from the push's one load of the trained model (its spec and reference scores).
    spec, reference = pruning.trained_spec_and_scores(trained_dir, trained["transform_dir"], rows)
    np.testing.assert_array_equal(reference, pruning.score_examples(trained_dir, rows))
    assert spec.columns and spec.columns[0].kind == "label"
    with pytest.raises(pruning.ParityError, match=rf"max \|Δprobability\| = {measured:.3g} > tolerance 1e-06"):
        pruning.check_parity(trained_dir, off_dir, rows, 1e-6, reference_scores=reference)
    with pytest.raises(pruning.ParityError, match="needs eval rows"):
        pruning.check_parity(trained_dir, off_dir, [], 1e-6, reference_scores=reference[:0])


def test_versions_are_never_overwritten_and_only_the_last_n_kept(pushed, tmp_path):
    source = pushed["artifact"].get_string_custom_property("pushed_destination")
    base = str(tmp_path / "serving")
    paths = [pruning.publish(source, base, MODEL_NAME, keep_versions=2, now=1000)[1] for _ in range(3)]
    assert paths == [1000, 1001, 1002]  # same clock: bumped past the existing version
    assert pruning.existing_versions(os.path.join(base, MODEL_NAME)) == [1001, 1002]
    assert pruning.publish(source, base, MODEL_NAME, keep_versions=2, now=5)[1] == 1003  # clock went back


_INTERRUPTED_PUSH = """
import os, signal, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import tensorflow as tf
from components.pruned_pusher import pruning
real_copy = tf.io.gfile.copy
copied = []
def copy_then_die(src, dst, overwrite=False):
    real_copy(src, dst, overwrite=overwrite)
    copied.append(dst)
    if len(copied) == 2:  # killed between two files of the version
        os.kill(os.getpid(), signal.SIGKILL)
tf.io.gfile.copy = copy_then_die
pruning.publish(sys.argv[1], sys.argv[2], "ctr", now=2000)
"""


def test_interrupted_push_leaves_no_loadable_partial_version_and_retry_succeeds(pushed, tmp_path):
    source = pushed["artifact"].get_string_custom_property("pushed_destination")
    base = str(tmp_path / "serving")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_USE_LEGACY_KERAS="1")
    proc = subprocess.run([sys.executable, "-c", _INTERRUPTED_PUSH, source, base], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    model_dir = os.path.join(base, MODEL_NAME)
    leftovers = os.listdir(model_dir)
    assert any(n.startswith(".tmp-2000-") for n in leftovers), leftovers  # it died mid-copy ...
    assert pruning.existing_versions(model_dir) == []  # ... and TF Serving sees no version at all

    path, version = pruning.publish(source, base, MODEL_NAME, now=2000)
    assert version == 2000 and os.listdir(model_dir) == ["2000"]  # stale temp dir cleaned up
    assert sorted(os.listdir(path)) == sorted(os.listdir(source))
    assert tf.saved_model.load(path).signatures["serving_default"] is not None


def test_component_compiles_for_kubeflow_v2(tmp_path):
    from tfx import v1 as tfx
    from tfx.types import standard_artifacts

    from components.pruned_pusher.component import PrunedPusher

    def imported(name, artifact_type):
        return tfx.dsl.Importer(source_uri=f"gs://bucket/{name}", artifact_type=artifact_type).with_id(name)
    nodes = {n: imported(n, t) for n, t in (("model", standard_artifacts.Model),
                                             ("blessing", standard_artifacts.ModelBlessing),
                                             ("examples", standard_artifacts.Examples),
                                             ("transform_graph", standard_artifacts.TransformGraph))}
    pusher = PrunedPusher(model=nodes["model"].outputs["result"], model_blessing=nodes["blessing"].outputs["result"],
                          examples=nodes["examples"].outputs["result"],
                          transform_graph=nodes["transform_graph"].outputs["result"],
                          push_destination=tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
                              base_directory="gs://bucket/serving")),
                          model_name="ctr", keep_versions=5)
    pipeline = tfx.dsl.Pipeline(pipeline_name="pusher-compile", pipeline_root="gs://bucket/root",
                                components=list(nodes.values()) + [pusher])
    out = str(tmp_path / "pipeline.json")
    tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image="sparsectr:test"),
        output_filename=out).run(pipeline)
    text = open(out).read()
    for key in ("keep_versions", "model_name", "parity_tolerance", "warmup_requests", "transform_graph"):
        assert key in text, key
    with pytest.raises(ValueError, match="keep_versions"):
        PrunedPusher(model=nodes["model"].outputs["result"], model_blessing=None,
                     examples=nodes["examples"].outputs["result"],
                     transform_graph=nodes["transform_graph"].outputs["result"],
                     push_destination=tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
                         base_directory="/x")), keep_versions=0)


def test_object_store_push_writes_saved_model_pb_last_and_drops_incomplete_versions(pushed, monkeypatch):
    # ram:// is TensorFlow's in-memory tf.io.gfile filesystem: not local, so no rename is used.
    source = pushed["artifact"].get_string_custom_property("pushed_destination")
    base = f"ram://pusher-{os.getpid()}/serving"
    tf.io.gfile.makedirs(f"{base}/ctr/7/variables")  # a push that died before its saved_model.pb
    with tf.io.gfile.GFile(f"{base}/ctr/7/variables/variables.index", "w") as f:
        f.write("partial")
    copied = []
    real_copy = tf.io.gfile.copy
    monkeypatch.setattr(tf.io.gfile, "copy", lambda src, dst, overwrite=False: (
        copied.append(dst), real_copy(src, dst, overwrite=overwrite)))
    path, version = pruning.publish(source, base, MODEL_NAME, now=100)
    assert version == 100 and path == f"{base}/ctr/100"
    assert copied[-1] == f"{path}/saved_model.pb" and len(copied) > 3
    assert pruning.existing_versions(f"{base}/ctr") == [100]
    config = pruning.write_models_config(base, MODEL_NAME)
    assert f'base_path: "{base}/ctr"' in tf.io.gfile.GFile(config).read()


@pytest.mark.parametrize("zero_rows", [[1, 3], [0, 1, 2, 3, 4]], ids=["some-rows-zero", "all-rows-zero"])
def test_compact_embedding_matches_the_full_table(zero_rows):
    import tf_keras as keras
    table = np.random.default_rng(0).normal(size=[5, 16]).astype(np.float32)
    table[zero_rows] = 0.0
    full = keras.layers.Embedding(5, 16, name="embedding_C1")
    full.build([None])
    full.set_weights([table])
    inputs = keras.Input(shape=(), dtype=tf.int64, name="C1")
    model = keras.Model(inputs, full(inputs))
    pruned, report = pruning.prune_model(model, min_compact_bytes=0)
    ids = tf.constant([0, 1, 2, 3, 4, 4, 1], tf.int64)
    np.testing.assert_array_equal(pruned(ids).numpy(), model(ids).numpy())
    assert isinstance(pruned.get_layer("embedding_C1"), pruning.CompactEmbedding)
    assert report.tables == {"C1": {"rows": 5, "zero_rows": len(zero_rows), "dim": 16, "compacted": True}}
    assert report.embedding_bytes_after == (5 - len(zero_rows) + 1) * 16 * 4
    # With the default threshold this 320-byte table is not worth its lookup ops: it stays whole.
    kept, report = pruning.prune_model(model)
    assert not report.tables["C1"]["compacted"] and report.embedding_bytes_after == 5 * 16 * 4
    assert isinstance(kept.get_layer("embedding_C1"), keras.layers.Embedding)
    np.testing.assert_array_equal(kept(ids).numpy(), model(ids).numpy())


@pytest.mark.parametrize("relative", [False, True], ids=["absolute-rows", "rows-relative-to-oov"])
@pytest.mark.parametrize("oov_zero", [True, False], ids=["oov-row-zero", "oov-row-kept"])
def test_pruned_vocabulary_gives_every_id_the_trained_vector(oov_zero, relative):
    """A model with FieldRows over a two-field vocabulary, pruned with its vocabulary: for every
    trained id (and -1, an unseen value), the pruned model at the id's line in the kept vocabulary
    (-1 for a dropped line) gives exactly the trained vector. A value whose row is zero loses its line
    when its field's OOV row is zero, and keeps it (mapped to the zero row) when not -- unless the
    rows are relative to the OOV row (`RelativeEmbedding`): then a zero row always loses its line."""
    import tf_keras as keras

    from components import models
    lines = [b"C1\x1fa", b"C2\x1fx", b"C1\x1fb", b"C1\x1fc", b"C2\x1fy", b"C1\x1fd"]
    global_to_row = np.array([0, 0, 1, 2, 1, 3])
    rows = {"C1": 5, "C2": 3}  # values + one OOV row each
    model = models.build_model("dnn", [], ["C1", "C2"], rows, embedding_dim=4, hidden_units=(3,),
                               global_to_row=global_to_row, oov_rows={"C1": 4, "C2": 2},
                               rows_relative_to_oov=relative)
    assert isinstance(model.get_layer("embedding_C1"), models.RelativeEmbedding) == relative
    rng = np.random.default_rng(1)
    tables = {}
    for field, zero in (("C1", [1, 3]), ("C2", [0])):
        table = rng.normal(size=[rows[field], 4]).astype(np.float32)
        table[zero] = 0.0
        if oov_zero:
            table[-1] = 0.0
        model.get_layer(f"embedding_{field}").set_weights([table])
        tables[field] = table
    pruned, report = pruning.prune_model(model, min_compact_bytes=0, vocabulary=lines)
    kept = [line for line, keep in zip(lines, report.vocabulary.keep_line) if keep]
    expected_kept = [b"C1\x1fa", b"C1\x1fc", b"C2\x1fy"] if (oov_zero or relative) else lines
    assert kept == expected_kept and report.vocabulary_lines_kept == len(kept) and report.vocabulary_lines == 6
    new_id = {line: i for i, line in enumerate(kept)}
    old_ids, new_ids = {}, {}
    for field, n in (("C1", 6), ("C2", 6)):  # each field's own ids, then -1 (unseen) to a common length
        own = [i for i, line in enumerate(lines) if line.startswith(field.encode())]
        old_ids[field] = tf.constant((own + [-1] * n)[:n], tf.int64)
        new_ids[field] = tf.constant(([new_id.get(lines[i], -1) for i in own] + [-1] * n)[:n], tf.int64)
    for field in ("C1", "C2"):
        trained_layer = keras.Model(model.inputs, model.get_layer(f"embedding_{field}").output)
        pruned_layer = keras.Model(pruned.inputs, pruned.get_layer(f"embedding_{field}").output)
        np.testing.assert_allclose(pruned_layer(new_ids).numpy(), trained_layer(old_ids).numpy(), rtol=0, atol=1e-7)
        # the compact table: the zero row and the non-zero rows, nothing else
        assert pruned.get_layer(f"embedding_{field}").embeddings.shape[0] == 1 + int(np.any(tables[field] != 0, 1).sum())
    np.testing.assert_allclose(pruned(new_ids).numpy(), model(old_ids).numpy(), atol=1e-7)
    assert report.id_map_bytes == 0 and report.compacted_tables == 2


def test_a_vocabulary_of_zero_rows_keeps_one_line():
    """Every row zero: one line stays (TF cannot build a lookup table from an empty file), at the
    zero row, where it scores as it would unseen."""
    lines = [b"C1\x1fa", b"C1\x1fb"]
    pruned = pruning.prune_vocabulary(lines, {"C1": np.zeros([3, 4], np.float32)})
    assert pruned.keep_line.tolist() == [True, False] and pruned.global_to_row.tolist() == [0]
    assert pruned.oov_rows == {"C1": 0} and pruned.kept_rows["C1"].tolist() == []


def test_a_field_without_vocabulary_lines_is_pruned_with_the_vocabulary():
    """A vocabulary field with no value at the frequency threshold has no line, only its OOV row:
    its table still follows FieldRows' -1 for unseen values (it used to stay a plain Embedding and
    fail on -1)."""
    from components import models
    lines = [b"C1\x1fa", b"C1\x1fb"]
    model = models.build_model("dnn", [], ["C1", "C2"], {"C1": 3, "C2": 1}, embedding_dim=4, hidden_units=(3,),
                               global_to_row=np.array([0, 1]), oov_rows={"C1": 2, "C2": 0})
    rng = np.random.default_rng(2)
    table = rng.normal(size=[3, 4]).astype(np.float32)
    table[1:] = 0.0  # "b" and the OOV row
    model.get_layer("embedding_C1").set_weights([table])
    model.get_layer("embedding_C2").set_weights([rng.normal(size=[1, 4]).astype(np.float32)])
    pruned, report = pruning.prune_model(model, min_compact_bytes=0, vocabulary=lines)
    assert isinstance(pruned.get_layer("embedding_C2"), pruning.VocabularyEmbedding)
    old = {"C1": tf.constant([0, 1, -1], tf.int64), "C2": tf.constant([-1, -1, -1], tf.int64)}
    assert report.vocabulary.keep_line.tolist() == [True, False]
    new = {"C1": tf.constant([0, -1, -1], tf.int64), "C2": old["C2"]}
    np.testing.assert_allclose(pruned(new).numpy(), model(old).numpy(), atol=1e-7)
