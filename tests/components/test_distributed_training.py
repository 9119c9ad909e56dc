"""The Trainer on localhost clusters (issue #21): every task a process with its own TF_CONFIG running
TFX's Trainer executor (`python -m components.trainer_job`, what each pod of a TFJob runs) on the
same artifacts.

* multi_worker, 2 workers: the chief's model equals a single-process run of the same global batches
  (every weight and optimizer slot within 1e-6; measured ~1e-7), only the chief writes a model, and
  a worker killed mid-run fails the other with one line within PEER_CHECK_INTERVAL_S plus a few
  seconds, leaving no model.
* parameter_server, 1 chief + 2 workers + 2 ps: tables sharded over both parameter servers, warm-started
  from a single-process model, trained, exported as ordinary whole-table variables; the ServingCheck
  (pruned export, fresh serving process over REST and gRPC) and the Pusher accept it at 1e-6, the
  sparsity report and the gates read it. A parameter server killed mid-run fails the run with one
  line; in a TFX pipeline (LocalDagRunner) the Pusher then never runs and nothing is pushed.
"""
import json
import os
import shutil
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from components.local_cluster import LocalCluster, python_module

pytestmark = pytest.mark.e2e

ROWS = 2000
TRAIN_ROWS = 1600
KEPT = {"label", "I1", "I2", "I3", "I4", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8"}
FAST = {"epochs": 1, "jit_compile": False, "hidden_units": [16], "embedding_dim": 16, "l21": 3e-4,
        "learning_rate": 0.02}
# A run that would take minutes: the tests that kill a task do it while this one trains.
LONG = {"epochs": 40, "early_stopping": False}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Examples (transformed train/eval splits), TransformGraph and Schema artifacts for the Criteo layout
    with fewer columns read (the same code paths, a smaller graph to trace on every task)."""
    import tensorflow_transform as tft
    from tfx.types import artifact_utils, standard_artifacts
    from tfx.utils import io_utils

    from components.click_log_example_gen.line_parser import LineParser
    from components.dataset_spec import DatasetSpec, load_spec
    from components.local_transform import analyze, transformed
    from components.schema import curated_schema
    from pipelines import generator
    from tests.components.test_trainer_module import _example

    root = tmp_path_factory.mktemp("distributed")
    criteo = load_spec("criteo").to_dict()
    criteo["columns"] = [c if c["name"] in KEPT else {"name": c["name"], "kind": "ignore"} for c in criteo["columns"]]
    criteo["frequency_threshold"] = 2
    spec = DatasetSpec.from_dict(criteo, source="criteo-small")
    report = generator.generate(str(root / "data"), ROWS)
    parser = LineParser(spec)
    with open(report["path"]) as f:
        raw = [parser.parse(line).example for line in f.read().splitlines()]
    transform_dir = str(root / "transform_graph")
    analyze(spec, raw, transform_dir)
    features = transformed(tft.TFTransformOutput(transform_dir), raw)
    examples = standard_artifacts.Examples()
    examples.uri = str(root / "examples")
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    for split, rows in (("train", range(0, TRAIN_ROWS)), ("eval", range(TRAIN_ROWS, ROWS))):
        os.makedirs(os.path.join(examples.uri, f"Split-{split}"))
        with tf.io.TFRecordWriter(os.path.join(examples.uri, f"Split-{split}", "data.gz"), options="GZIP") as w:
            for i in rows:
                w.write(_example(features, i))
    graph = standard_artifacts.TransformGraph()
    graph.uri = transform_dir
    schema = standard_artifacts.Schema()
    schema.uri = str(root / "schema")
    io_utils.write_pbtxt_file(os.path.join(schema.uri, "schema.pbtxt"), curated_schema(spec))
    # The raw eval rows, as ExampleGen's eval split holds them (ServingCheck and Pusher read these).
    raw_examples = standard_artifacts.Examples()
    raw_examples.uri = str(root / "raw_examples")
    raw_examples.split_names = artifact_utils.encode_split_names(["eval"])
    os.makedirs(os.path.join(raw_examples.uri, "Split-eval"))
    with tf.io.TFRecordWriter(os.path.join(raw_examples.uri, "Split-eval", "data.gz"), options="GZIP") as w:
        for row in raw[TRAIN_ROWS:]:
            w.write(row)
    return {"artifacts": {"examples": [examples], "transform_graph": [graph], "schema": [schema]},
            "spec": spec, "root": root, "raw_examples": raw_examples, "raw_eval": raw[TRAIN_ROWS:]}


def exec_properties(inputs, **trainer):
    import dataclasses

    from tfx.proto import trainer_pb2
    from tfx.utils import proto_utils

    from pipelines.config import TrainerConfig
    cfg = dict(dataclasses.asdict(TrainerConfig()), **FAST)
    cfg.update(trainer)
    return {"run_fn": "components.trainer_module.run_fn",
            "train_args": proto_utils.proto_to_json(trainer_pb2.TrainArgs()),
            "eval_args": proto_utils.proto_to_json(trainer_pb2.EvalArgs()),
            "custom_config": json.dumps({"trainer": json.dumps(cfg), "dataset_spec": inputs["spec"].to_json()})}


def spec_file(inputs, out, path, base_model=None, **trainer):
    from tfx.types import standard_artifacts

    from components.trainer_job import write_spec
    artifacts = dict(inputs["artifacts"])
    if base_model:
        base = standard_artifacts.Model()
        base.uri = base_model
        artifacts["base_model"] = [base]
    return write_spec(str(path), artifacts, {"model": str(out / "model"), "model_run": str(out / "model_run")},
                      exec_properties(inputs, **trainer))


def state(model_uri):
    return tf.train.load_checkpoint(os.path.join(model_uri, "warm_start", "state"))


def last_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def wait_for_training(model_run, cluster, timeout=420):
    """Until the chief's TensorBoard callback opened its train log (fit started)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if tf.io.gfile.glob(os.path.join(model_run, "train", "events*")):
            return
        if any(p.poll() is not None for p in cluster.processes.values()):
            raise AssertionError("a task ended before training started:\n" + "\n".join(
                cluster.output(*t)[-2000:] for t in cluster.tasks))
        time.sleep(0.5)
    raise AssertionError("training did not start")


@pytest.fixture(scope="module")
def single(inputs, tmp_path_factory):
    """The single-process Trainer (same config, no cluster), in this process through TFX's executor."""
    from tfx.components.trainer.executor import GenericExecutor
    from tfx.types import standard_artifacts
    out = tmp_path_factory.mktemp("single")
    model, model_run = standard_artifacts.Model(), standard_artifacts.ModelRun()
    model.uri, model_run.uri = str(out / "model"), str(out / "model_run")
    GenericExecutor().Do(inputs["artifacts"], {"model": [model], "model_run": [model_run]},
                         exec_properties(inputs, distribution="none"))
    return model.uri


def test_multi_worker_equals_single_process_and_only_the_chief_writes(inputs, single, tmp_path):
    # One spec for both tasks, as every pod of a TFJob gets the same artifacts.
    spec = spec_file(inputs, tmp_path / "out", tmp_path / "spec.json", distribution="multi_worker")
    with LocalCluster(workers=2, log_dir=str(tmp_path)) as cluster:
        cluster.start_all(python_module("components.trainer_job", spec))
        codes = [cluster.wait("worker", i, timeout=600) for i in range(2)]
        assert codes == [0, 0], "\n".join(cluster.output("worker", i)[-3000:] for i in range(2))
    chief = str(tmp_path / "out" / "model")
    assert sorted(os.listdir(chief)) == ["Format-Serving", "sparsity.json", "training.json", "warm_start"]
    training = json.load(open(os.path.join(chief, "training.json")))
    # Written by worker 0 (the chief of a cluster without a "chief" task); worker 1 saved to a
    # scratch folder (saving runs collectives), removed it, and waited for the chief's model.
    assert training["distribution"] == {"strategy": "CollectiveAllReduceStrategy", "replicas": 2,
                                        "jit_compile": False, "task": "worker 0", "workers": 2}
    # Each worker took half of every global batch; gradients summed across them: the single
    # process's model, weights and every optimizer slot (the Group Adam dual z included).
    reference, distributed = state(single), state(chief)
    names = sorted(reference.get_variable_to_shape_map())
    assert names == sorted(distributed.get_variable_to_shape_map()) and len(names) > 30
    worst = max(float(np.max(np.abs(distributed.get_tensor(n) - reference.get_tensor(n)), initial=0)) for n in names)
    assert worst <= 1e-6, worst
    single_training = json.load(open(os.path.join(single, "training.json")))
    for key, value in single_training["final"].items():
        assert training["final"][key] == pytest.approx(value, abs=1e-5), key


def test_multi_worker_fails_in_one_line_when_a_worker_dies(inputs, tmp_path):
    from components import distributed
    spec = spec_file(inputs, tmp_path / "out", tmp_path / "spec.json", distribution="multi_worker", **LONG)
    with LocalCluster(workers=2, log_dir=str(tmp_path)) as cluster:
        cluster.start_all(python_module("components.trainer_job", spec))
        wait_for_training(str(tmp_path / "out" / "model_run"), cluster)
        time.sleep(2)
        cluster.kill("worker", 1)
        killed = time.time()
        code = cluster.wait("worker", 0, timeout=120)
        seconds = time.time() - killed
        output = cluster.output("worker", 0)
    assert code == 1, output[-3000:]
    assert seconds < distributed.PEER_CHECK_INTERVAL_S + 60, seconds
    line = last_line(output)
    address = cluster.spec["worker"][1]
    assert line.startswith(f"sparsectr trainer worker 0: ClusterError: training failed: worker 1 ({address})"), line
    assert line.endswith("No model was exported.")
    model = tmp_path / "out" / "model"
    assert not os.path.exists(model / "Format-Serving") and not os.path.exists(model / "warm_start")
    assert not [n for n in (os.listdir(model) if os.path.exists(model) else []) if n.startswith(".staging")]


def _pushed_layout(model_uri, root):
    """A model as LatestPushedModel hands it on: the version folder (with its warm_start/) as Format-Serving."""
    base = os.path.join(root, "base_model")
    shutil.copytree(os.path.join(model_uri, "Format-Serving"), os.path.join(base, "Format-Serving"))
    shutil.copytree(os.path.join(model_uri, "warm_start"), os.path.join(base, "Format-Serving", "warm_start"))
    return base


def test_parameter_servers_train_sharded_tables_that_export_and_serve(inputs, single, tmp_path):
    import tf_keras as keras

    from components import gates
    from components.pruned_pusher import pruning
    from tests.components.test_serving_check import run_pusher, run_serving_check

    base = _pushed_layout(single, str(tmp_path))
    spec = spec_file(inputs, tmp_path / "out", tmp_path / "spec.json", base_model=base,
                     distribution="parameter_server")
    with LocalCluster(workers=2, ps=2, chief=True, log_dir=str(tmp_path)) as cluster:
        cluster.start_all(python_module("components.trainer_job", spec))
        code = cluster.wait("chief", 0, timeout=600)
        assert code == 0, cluster.output("chief", 0)[-4000:]
        # The workers and parameter servers serve until stopped (a TFJob ends them with the chief).
        assert all(cluster.processes[t].poll() is None for t in cluster.tasks if t[0] != "chief")
    model = str(tmp_path / "out" / "model")
    training = json.load(open(os.path.join(model, "training.json")))
    assert training["distribution"]["strategy"] == "ParameterServerStrategyV2"
    assert training["distribution"]["jit_compile"] is False
    assert training["steps"] == -(-TRAIN_ROWS // 256)  # one pass in global batches, over both workers
    # Warm start into sharded tables: rows carried by value, the optimizer state continued.
    warm = training["warm_start"]
    assert warm["restored"] and warm["optimizer_state"] and warm["rows_carried"] > 0
    assert warm["steps_before"] == json.load(open(os.path.join(single, "training.json")))["steps"]

    # The export holds each table whole (one variable, its full shape), as a single process's.
    exported = state(model)
    reference = state(single)
    assert sorted(exported.get_variable_to_shape_map()) == sorted(reference.get_variable_to_shape_map())
    assert not any("part_" in n for n in exported.get_variable_to_shape_map())
    loaded = keras.models.load_model(os.path.join(model, "Format-Serving"), custom_objects=pruning.custom_objects(),
                                     compile=False)
    tables = {layer.name: layer.embeddings.numpy() for layer in loaded.layers if layer.name.startswith("embedding_")}
    assert len(tables) == 8
    for name, table in tables.items():
        assert table.shape == tuple(reference.get_variable_to_shape_map()[f"{name}/embeddings"])
        np.testing.assert_array_equal(table, exported.get_tensor(f"{name}/embeddings"))
    # The sparsity report and the gates read the sharded model's tables.
    sparsity = json.load(open(os.path.join(model, "sparsity.json")))
    zero = sum(int(np.sum(~np.any(t != 0, axis=1))) for t in tables.values())
    assert sparsity["zero_rows"] == zero > 0 and sparsity["rows"] == sum(len(t) for t in tables.values())
    decision = gates.decide({"candidate": training["final"]["val_auc"]}, True, sparsity, min_auc=0.0,
                            max_auc_drop=0.01, min_sparsity=sparsity["fraction"] - 1e-9, min_sparsity_per_table={})
    assert decision["blessed"], decision

    # Exported, pruned (every table compacted) and served by a fresh serving process over REST and
    # gRPC: the same scores as the trained model's, within 1e-6; then pushed.
    trained = {"model_uri": model, "examples_uri": inputs["raw_examples"].uri,
               "transform_dir": inputs["artifacts"]["transform_graph"][0].uri}
    check_inputs, blessing, report = run_serving_check(trained, str(tmp_path / "check"), min_compact_bytes=0,
                                                       parity_tolerance=1e-6, max_score_diff=1e-6)
    assert report["passed"], report
    assert report["parity_max_abs_error"] <= 1e-6
    assert blessing.get_int_custom_property("compacted_tables") >= 1  # the pruned layers, CompactEmbedding
    assert blessing.get_int_custom_property("embedding_zero_rows") == zero
    pushed = run_pusher(check_inputs, blessing, str(tmp_path / "serving"), str(tmp_path / "check"))
    assert pushed.get_int_custom_property("pushed") == 1


# The chief of a parameter-server cluster as a TFX pipeline: Importer nodes for the artifacts, the
# Trainer (this project's run_fn), TFX's Pusher. Run with LocalDagRunner in the chief's process.
_PIPELINE_CHIEF = """
import json, os, sys
from tfx import v1 as tfx
from tfx.types import standard_artifacts
args = json.loads(open(sys.argv[1]).read())
examples = tfx.dsl.Importer(source_uri=args["examples"], artifact_type=standard_artifacts.Examples,
                            properties={"split_names": '["train", "eval"]'}).with_id("examples")
graph = tfx.dsl.Importer(source_uri=args["transform_graph"], artifact_type=standard_artifacts.TransformGraph
                         ).with_id("transform_graph")
trainer = tfx.components.Trainer(run_fn="components.trainer_module.run_fn", examples=examples.outputs["result"],
                                 transform_graph=graph.outputs["result"],
                                 custom_config=json.loads(args["custom_config"]))
pusher = tfx.components.Pusher(model=trainer.outputs["model"], push_destination=tfx.proto.PushDestination(
    filesystem=tfx.proto.PushDestination.Filesystem(base_directory=args["serving"])))
pipeline = tfx.dsl.Pipeline(pipeline_name="ps-death", pipeline_root=args["root"],
                            components=[examples, graph, trainer, pusher],
                            metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
                                args["root"] + "/metadata.db"))
try:
    tfx.orchestration.LocalDagRunner().run(pipeline)
except Exception as error:
    print("pipeline failed:", type(error).__name__, " ".join(str(error).split())[:400], file=sys.stderr, flush=True)
    os._exit(1)
os._exit(0)
"""


def test_parameter_server_death_fails_the_run_in_one_line_and_pushes_nothing(inputs, tmp_path):
    root, serving = tmp_path / "pipeline", tmp_path / "serving"
    props = exec_properties(inputs, distribution="parameter_server", **LONG)
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"examples": inputs["artifacts"]["examples"][0].uri,
                                "transform_graph": inputs["artifacts"]["transform_graph"][0].uri,
                                "custom_config": props["custom_config"], "serving": str(serving),
                                "root": str(root)}))
    script = tmp_path / "chief.py"
    script.write_text(_PIPELINE_CHIEF)
    spec = spec_file(inputs, tmp_path / "unused", tmp_path / "spec.json", distribution="parameter_server")
    with LocalCluster(workers=2, ps=2, chief=True, log_dir=str(tmp_path)) as cluster:
        for role in ("ps", "worker"):  # the same command on every task; these serve
            for index in range(2):
                cluster.start(role, index, python_module("components.trainer_job", spec))
        cluster.start("chief", 0, [sys.executable, str(script), str(args)])
        deadline = time.time() + 480
        while not tf.io.gfile.glob(str(root / "Trainer" / "model_run" / "*" / "train" / "events*")):
            assert time.time() < deadline and cluster.processes[("chief", 0)].poll() is None, \
                cluster.output("chief", 0)[-3000:]
            time.sleep(0.5)
        time.sleep(2)
        cluster.kill("ps", 1)
        killed = time.time()
        code = cluster.wait("chief", 0, timeout=180)
        seconds = time.time() - killed
        output = cluster.output("chief", 0)
    assert code == 1, output[-3000:]
    assert seconds < 120, seconds
    # One line says what happened: TFX logs the Trainer's error, the pipeline fails with it.
    address = cluster.spec["ps"][1]
    lines = [line for line in output.splitlines() if "ClusterError" in line or "training failed: ps 1" in line]
    assert lines, output[-3000:]
    assert f"training failed: ps 1 ({address}) is unreachable or failed" in last_line(output), last_line(output)
    assert last_line(output).endswith("No model was exported.")
    # No model written, the Pusher never ran, nothing pushed.
    assert not tf.io.gfile.glob(str(root / "Trainer" / "model" / "*" / "Format-Serving"))
    assert not tf.io.gfile.exists(str(root / "Pusher")) and not tf.io.gfile.exists(str(serving))


def test_a_target_with_parameter_servers_fails_in_one_line_before_training(inputs, tmp_path):
    # The controller sets l21 between batches; Keras runs no batch-level callback under
    # ParameterServerStrategy. The config check refuses it up front (tests/pipelines/test_config.py);
    # "auto" resolved to parameter_server from TF_CONFIG fails here, before fit, in one line.
    spec = spec_file(inputs, tmp_path / "out", tmp_path / "spec.json", distribution="auto", target_sparsity=0.7)
    with LocalCluster(workers=1, ps=1, chief=True, log_dir=str(tmp_path)) as cluster:
        cluster.start_all(python_module("components.trainer_job", spec))
        code = cluster.wait("chief", 0, timeout=600)
        output = cluster.output("chief", 0)
    assert code != 0
    assert "a sparsity or size target cannot be used with parameter_server training" in last_line(output), \
        last_line(output)
    assert not tf.io.gfile.exists(str(tmp_path / "out" / "model" / "Format-Serving"))
