"""ServingCheck against the real serving process (``python -m serving.local_server`` in a fresh process).

Candidates are real SavedModels: the CTR fixture model of tests/serving (the pushed model's
contract) and deliberately broken ones -- unloadable files, a signature that answers the wrong shape,
other scores, a model too slow for the limit, a warmup file TF Serving would reject. Then the
executors: the ServingCheck on a model trained with Group Adam (the PrunedPusher tests' fixture) and
the Pusher after it, directly and orchestrated by LocalDagRunner: a broken export is never pushed.
"""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from components.serving_check import check
from components.pruned_pusher import pruning
from tests.components.test_pruned_pusher import trained  # noqa: F401 -- the module fixture
from tests.serving.conftest import criteo_rows, save_ctr_model, to_example

MODEL_NAME = "ctr"
SAMPLE = 20


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """The fixture CTR model with a warmup file, its sample rows and its own scores of them."""
    base = str(tmp_path_factory.mktemp("good"))
    path = save_ctr_model(base, 1)
    rows = [to_example(r) for r in criteo_rows(SAMPLE)]
    pruning.write_warmup_requests(path, rows, MODEL_NAME, SAMPLE)
    return {"path": path, "rows": rows, "scores": pruning.score_examples(path, rows)}


def copy_of(good, tmp_path, name="candidate"):
    target = str(tmp_path / name)
    shutil.copytree(good["path"], target)
    return target


def run_check(candidate, good, **limits):
    return check.check_candidate(candidate, good["rows"], good["scores"], MODEL_NAME, check.Limits(**limits))


def test_servable_candidate_passes_with_every_measurement(good):
    report = run_check(good["path"], good)
    assert report["passed"], report
    m = report["measured"]
    assert 0 < m["load_s"] < 60 and 0 < m["startup_s"]
    assert m["warmup_requests"] == SAMPLE
    assert m["requests_rest"] == SAMPLE and m["requests_grpc"] == 2 * SAMPLE
    assert 0 < m["p50_ms_rest"] <= m["p99_ms_rest"] and 0 < m["p50_ms_grpc"] <= m["p99_ms_grpc"]
    assert m["max_score_diff"] <= 1e-6
    assert m["signatures_checked"] == ["predict_raw", "serving_default"]
    assert 100 < m["peak_rss_mb"] < 4096 and m["rss_mb"] <= m["peak_rss_mb"]
    assert set(report["checks"]) == {"load_s", "peak_rss_mb", "p99_latency_ms", "max_score_diff"}
    assert all(c["passed"] for c in report["checks"].values())
    assert check.summary_line(report).endswith("-> PASS")


@pytest.mark.parametrize("limit, reason", [
    ({"max_load_seconds": 1e-4}, "the candidate did not load within 0.0001s (max_load_seconds)"),
    ({"max_peak_rss_mb": 1.0}, "peak RSS "), ({"max_p99_latency_ms": 1e-4}, "p99 latency ")])
def test_each_limit_fails_the_check(good, limit, reason):
    report = run_check(good["path"], good, **limit)
    assert not report["passed"]
    assert report["reason"].startswith(reason), report["reason"]
    if reason.endswith(" "):
        assert report["reason"].endswith(f"> limit {list(limit.values())[0]:g}{' MB' if 'rss' in reason.lower() else ' ms'}")


def test_unloadable_candidate_fails_with_the_load_error(good, tmp_path):
    candidate = copy_of(good, tmp_path)
    for name in tf.io.gfile.listdir(os.path.join(candidate, "variables")):
        with open(os.path.join(candidate, "variables", name), "wb") as f:
            f.write(b"not a checkpoint")
    report = run_check(candidate, good)
    assert not report["passed"]
    assert report["reason"].startswith("the serving process cannot load the candidate: "), report["reason"]
    assert report["checks"] == {}


def test_garbage_saved_model_pb_fails(good, tmp_path):
    candidate = copy_of(good, tmp_path)
    with open(os.path.join(candidate, "saved_model.pb"), "wb") as f:
        f.write(b"\x00garbage")
    report = run_check(candidate, good)
    assert not report["passed"] and "cannot load the candidate" in report["reason"], report["reason"]


def test_missing_variables_fails_before_serving(good, tmp_path):
    candidate = copy_of(good, tmp_path)
    shutil.rmtree(os.path.join(candidate, "variables"))
    report = run_check(candidate, good)
    assert not report["passed"] and "no variables/" in report["reason"]


def _wrapped(good, tmp_path, transform):
    """A SavedModel whose serving_default is transform(the good model's probability)."""
    loaded = tf.saved_model.load(good["path"])
    module = tf.Module()
    module.inner = loaded

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(examples):
        return {"probability": transform(loaded.signatures["serving_default"](examples=examples)["probability"])}

    path = str(tmp_path / "wrapped")
    tf.saved_model.save(module, path, signatures={"serving_default": serve})
    return path


def test_wrong_shape_answer_fails(good, tmp_path):
    candidate = _wrapped(good, tmp_path, lambda p: tf.stack([p, p], axis=1))
    report = run_check(candidate, good)
    assert not report["passed"]
    assert "probability has shape [1, 2] for a batch of 1 (expected [1])" in report["reason"], report["reason"]


def test_scores_other_than_the_trained_models_fail(good, tmp_path):
    other = save_ctr_model(str(tmp_path / "other"), 1, seed=7)
    pruning.write_warmup_requests(other, good["rows"], MODEL_NAME, 5)
    report = run_check(other, good)
    assert not report["passed"]
    assert report["reason"].startswith("max |score - trained score| "), report["reason"]
    assert report["measured"]["max_score_diff"] > 1e-3


def test_too_slow_model_fails_the_latency_limit(good, tmp_path):
    # ~50 GFLOP a request (24 chained 1024x1024 matmuls, a fixed point of m @ m): hundreds of ms on
    # any CPU this runs on, far above the 20 ms limit (512x512 x 12 took < 20 ms with AVX-512).
    def slow(p):
        x = tf.ones([1024, 1024]) / 1024.0
        x = tf.while_loop(lambda i, m: i < 24, lambda i, m: (i + 1, tf.matmul(m, m)), [tf.constant(0), x])[1]
        return p + 0.0 * tf.reduce_sum(x)

    candidate = _wrapped(good, tmp_path, slow)
    few = {"rows": good["rows"][:3], "scores": good["scores"][:3]}
    report = check.check_candidate(candidate, few["rows"], few["scores"], MODEL_NAME,
                                   check.Limits(max_p99_latency_ms=20))
    assert not report["passed"]
    assert report["reason"].startswith("p99 latency ") and "> limit 20 ms" in report["reason"], report["reason"]


def test_warmup_request_the_model_rejects_fails(good, tmp_path):
    candidate = copy_of(good, tmp_path)
    pruning.write_warmup_requests(candidate, [b"not a tf.Example"], MODEL_NAME, 1)
    report = run_check(candidate, good)
    assert not report["passed"]
    assert report["reason"].startswith("warmup request 0 failed: INVALID_ARGUMENT"), report["reason"]


def test_serving_process_that_dies_fails_and_is_reported(good, tmp_path, monkeypatch):
    # A serving process that cannot start (its interpreter exits at once): fail-closed, with its last line.
    monkeypatch.setattr(check.sys, "executable", "/bin/false")
    report = run_check(good["path"], good)
    assert not report["passed"] and report["reason"].startswith("the serving process exited with code 1")


def test_ports_taken_before_the_server_binds_them_are_chosen_again(good, monkeypatch):
    import socket
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    real, calls = check._free_port, []

    def first_a_taken_port():
        calls.append(1)
        return busy.getsockname()[1] if len(calls) <= 2 else real()

    monkeypatch.setattr(check, "_free_port", first_a_taken_port)
    try:
        report = run_check(good["path"], good)
    finally:
        busy.close()
    assert report["passed"], report["reason"]
    assert len(calls) == 4  # two ports, twice


def test_a_server_started_before_the_check_is_checked_and_stopped(good, tmp_path):
    work = str(tmp_path / "serve")
    server = check.start_serving(work, MODEL_NAME)
    report = check.check_candidate(good["path"], good["rows"], good["scores"], MODEL_NAME, work_dir=work,
                                   server=server)
    assert report["passed"], report["reason"]
    assert report["measured"]["startup_s"] > 0 and report["measured"]["warmup_requests"] == SAMPLE
    assert server.proc.poll() is not None


def test_a_server_started_before_the_check_comes_with_its_work_dir(good, tmp_path):
    server = check.start_serving(str(tmp_path / "serve"), MODEL_NAME)
    with pytest.raises(ValueError, match="work_dir"):
        check.check_candidate(good["path"], good["rows"], good["scores"], MODEL_NAME, server=server)
    assert server.proc.poll() is not None


# -- the executors -------------------------------------------------------------------------------------

def _check_artifacts(trained, out_root, blessed=True):
    from tfx.types import artifact_utils, standard_artifacts

    from components.serving_check.component import ServingCheckReport
    model = standard_artifacts.Model()
    model.uri = trained["model_uri"]
    gate = standard_artifacts.ModelBlessing()
    gate.uri = os.path.join(out_root, "gate")
    gate.set_int_custom_property("blessed", 1 if blessed else 0)
    examples = standard_artifacts.Examples()
    examples.uri = trained["examples_uri"]
    examples.split_names = artifact_utils.encode_split_names(["eval"])
    transform_graph = standard_artifacts.TransformGraph()
    transform_graph.uri = trained["transform_dir"]
    blessing = standard_artifacts.InfraBlessing()
    blessing.uri = os.path.join(out_root, "infra_blessing")
    report = ServingCheckReport()
    report.uri = os.path.join(out_root, "report")
    inputs = {"model": [model], "model_blessing": [gate], "examples": [examples], "transform_graph": [transform_graph]}
    return inputs, {"blessing": [blessing], "report": [report]}


def run_serving_check(trained, out_root, blessed=True, **params):
    from components.serving_check.executor import Executor
    inputs, outputs = _check_artifacts(trained, out_root, blessed)
    Executor().Do(inputs, outputs, {"model_name": MODEL_NAME, "warmup_requests": 50, "sample_rows": 30, **params})
    with open(os.path.join(outputs["report"][0].uri, "serving_check.json")) as f:
        return inputs, outputs["blessing"][0], json.load(f)


def digests(root):
    """{relative path: sha256} of every file under root."""
    import hashlib
    out = {}
    for directory, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(directory, name), "rb") as f:
                out[os.path.relpath(os.path.join(directory, name), root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def run_pusher(inputs, blessing, base_dir, out_root):
    from tfx.proto import pusher_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils

    from components.pruned_pusher.executor import Executor
    pushed = standard_artifacts.PushedModel()
    pushed.uri = os.path.join(out_root, "pushed_model")
    gate = standard_artifacts.ModelBlessing()
    gate.uri = os.path.join(out_root, "gate2")
    gate.set_int_custom_property("blessed", 1)
    destination = pusher_pb2.PushDestination(filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=base_dir))
    Executor().Do(dict(inputs, model_blessing=[gate], infra_blessing=[blessing]), {"pushed_model": [pushed]},
                  {"push_destination": proto_utils.proto_to_json(destination), "model_name": MODEL_NAME,
                   "keep_versions": 3, "warmup_requests": 50})
    return pushed


def test_executor_blesses_a_servable_candidate_and_the_pusher_publishes_exactly_it(trained, tmp_path, monkeypatch):
    loads, load = [], tf.saved_model.load
    monkeypatch.setattr(tf.saved_model, "load", lambda path, *a, **k: loads.append(os.path.normpath(path)) or
                        load(path, *a, **k))
    inputs, blessing, report = run_serving_check(trained, str(tmp_path))
    assert report["passed"], report
    # The trained SavedModel is read once (spec and reference scores; the Keras model is its own load).
    assert loads.count(os.path.normpath(os.path.join(trained["model_uri"], "Format-Serving"))) == 1, loads
    assert blessing.get_int_custom_property("blessed") == 1 and blessing.get_int_custom_property("has_model") == 1
    assert os.path.exists(os.path.join(blessing.uri, "INFRA_BLESSED"))
    stamped = os.path.join(blessing.uri, "stamped_model")
    assert report["stamped_model"] == stamped
    assert report["parity_max_abs_error"] <= 1e-6 and report["measured"]["warmup_requests"] == 50
    assert blessing.get_int_custom_property("embedding_zero_rows") > 0
    # The pushed version is the checked export, file for file (plus nothing else here: no warm-start state).
    base = str(tmp_path / "serving")
    pushed = run_pusher(inputs, blessing, base, str(tmp_path))
    assert pushed.get_int_custom_property("pushed") == 1
    version_dir = pushed.get_string_custom_property("pushed_destination")
    assert digests(version_dir) == digests(stamped)
    assert pushed.get_string_custom_property("checked_export") == stamped
    for key in ("embedding_zero_rows", "size_after_bytes", "warmup_requests"):
        assert pushed.get_int_custom_property(key) == blessing.get_int_custom_property(key)
    assert os.path.isfile(pushed.get_string_custom_property("models_config"))


def _break_export(monkeypatch, how):
    """export_pruned writes the real export, then the test breaks it the way `how` says."""
    real = pruning.export_pruned

    def export_then_break(trained_model_dir, transform_graph_dir, export_dir, **kwargs):
        report = real(trained_model_dir, transform_graph_dir, export_dir, **kwargs)
        if how == "unloadable":
            for name in os.listdir(os.path.join(export_dir, "variables")):
                with open(os.path.join(export_dir, "variables", name), "wb") as f:
                    f.write(b"broken")
        elif how == "wrong-shape":
            loaded = tf.saved_model.load(export_dir)
            module = tf.Module()
            module.inner = loaded

            @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
            def serve(examples):
                p = loaded.signatures["serving_default"](examples=examples)["probability"]
                return {"probability": tf.reshape(p, [-1, 1])}

            rebuilt = export_dir + "-wrong-shape"
            tf.saved_model.save(module, rebuilt, signatures={"serving_default": serve})
            shutil.rmtree(export_dir)
            os.rename(rebuilt, export_dir)
        return report

    monkeypatch.setattr(pruning, "export_pruned", export_then_break)


@pytest.mark.parametrize("how, reason", [("unloadable", "cannot be loaded and scored in process"),
                                          ("wrong-shape", "probability has shape [1, 1]")])
def test_broken_export_is_not_blessed_and_nothing_is_pushed(trained, tmp_path, monkeypatch, how, reason):
    _break_export(monkeypatch, how)
    started, real_start = [], check.start_serving
    monkeypatch.setattr(check, "start_serving", lambda *a, **k: started.append(real_start(*a, **k)) or started[-1])
    inputs, blessing, report = run_serving_check(trained, str(tmp_path), parity_examples=1)
    assert not report["passed"] and reason in report["reason"], report["reason"]
    # The serving process started before the export is gone, whether the check reached it or not.
    assert len(started) == 1 and started[0].proc.poll() is not None
    assert blessing.get_int_custom_property("blessed") == 0 and blessing.get_int_custom_property("has_model") == 0
    assert os.path.exists(os.path.join(blessing.uri, "INFRA_NOT_BLESSED"))
    assert not os.path.exists(os.path.join(blessing.uri, "stamped_model"))
    base = str(tmp_path / "serving")
    pushed = run_pusher(inputs, blessing, base, str(tmp_path))
    assert pushed.get_int_custom_property("pushed") == 0
    assert not os.path.exists(base)


def test_model_the_gates_did_not_bless_is_not_checked(trained, tmp_path):
    _, blessing, report = run_serving_check(trained, str(tmp_path), blessed=False)
    assert report == dict(report, passed=False, skipped=True, reason="not run: the gates did not bless the model")
    assert blessing.get_int_custom_property("blessed") == 0


def test_examples_that_are_not_tf_example_tfrecords_fail_before_serving_starts(trained, tmp_path, monkeypatch):
    from tfx.components.util import examples_utils
    from tfx.proto import example_gen_pb2

    from components.serving_check import check
    from components.serving_check.executor import Executor

    def no_server(*args, **kwargs):
        raise AssertionError("the serving process was started")

    monkeypatch.setattr(check, "start_serving", no_server)
    inputs, outputs = _check_artifacts(trained, str(tmp_path))
    examples_utils.set_payload_format(inputs["examples"][0], example_gen_pb2.PayloadFormat.FORMAT_PARQUET)
    examples_utils.set_file_format(inputs["examples"][0], "parquet")
    with pytest.raises(ValueError, match="FORMAT_PARQUET in parquet files"):
        Executor().Do(inputs, outputs, {"model_name": MODEL_NAME, "warmup_requests": 50, "sample_rows": 30})
    assert not os.path.exists(os.path.join(outputs["blessing"][0].uri, "INFRA_BLESSED"))


@pytest.mark.parametrize("how", ["good", "wrong-shape"])
def test_local_dag_runner_pushes_only_a_servable_candidate(trained, tmp_path, monkeypatch, how):
    """ServingCheck -> PrunedPusher orchestrated by LocalDagRunner (ML Metadata, real channels)."""
    from tfx import v1 as tfx
    from tfx.orchestration import metadata

    from components.pruned_pusher.component import PrunedPusher
    from components.serving_check.component import ServingCheck

    if how != "good":
        _break_export(monkeypatch, how)
    types = tfx.types.standard_artifacts

    def imported(name, uri, artifact_type, **kwargs):
        return tfx.dsl.Importer(source_uri=uri, artifact_type=artifact_type, **kwargs).with_id(name)

    model = imported("model", trained["model_uri"], types.Model)
    examples = imported("examples", trained["examples_uri"], types.Examples,
                        properties={"split_names": '["eval"]'})
    transform_graph = imported("transform_graph", trained["transform_dir"], types.TransformGraph)
    gate_dir = tmp_path / "gate"
    gate_dir.mkdir()
    gate = imported("gate", str(gate_dir), types.ModelBlessing, custom_properties={"blessed": 1})
    serving_check = ServingCheck(model=model.outputs["result"], examples=examples.outputs["result"],
                                 transform_graph=transform_graph.outputs["result"],
                                 model_blessing=gate.outputs["result"], model_name=MODEL_NAME, warmup_requests=20,
                                 sample_rows=20, parity_examples=1)
    base = str(tmp_path / "serving")
    pusher = PrunedPusher(model=model.outputs["result"], model_blessing=gate.outputs["result"],
                          infra_blessing=serving_check.outputs["blessing"], examples=examples.outputs["result"],
                          transform_graph=transform_graph.outputs["result"],
                          push_destination=tfx.proto.PushDestination(
                              filesystem=tfx.proto.PushDestination.Filesystem(base_directory=base)),
                          model_name=MODEL_NAME, warmup_requests=20)
    root = tmp_path / "pipeline_root"
    tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
        pipeline_name="serving-check-test", pipeline_root=str(root),
        components=[model, examples, transform_graph, gate, serving_check, pusher],
        metadata_connection_config=metadata.sqlite_metadata_connection_config(str(tmp_path / "mlmd.sqlite"))))
    versions = pruning.existing_versions(os.path.join(base, MODEL_NAME)) if os.path.isdir(base) else []
    if how == "good":
        assert len(versions) == 1
        (stamped,) = tf.io.gfile.glob(str(root / "ServingCheck" / "blessing" / "*" / "stamped_model"))
        assert pruning.manifest(os.path.join(base, MODEL_NAME, str(versions[0]))) == pruning.manifest(stamped)
    else:
        assert versions == [] and not os.path.exists(base)
        (report,) = tf.io.gfile.glob(str(root / "ServingCheck" / "report" / "*" / "serving_check.json"))
        with open(report) as f:
            assert "probability has shape [1, 1]" in json.load(f)["reason"]


def test_component_compiles_for_kubeflow_v2(tmp_path):
    """A container step like any other: TFX's KFP v2 compiler takes it (it refuses InfraValidator)."""
    from tfx import v1 as tfx
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    from components.serving_check.component import ServingCheck
    types = tfx.types.standard_artifacts
    model = tfx.dsl.Importer(source_uri="gs://b/model", artifact_type=types.Model).with_id("model")
    examples = tfx.dsl.Importer(source_uri="gs://b/ex", artifact_type=types.Examples).with_id("examples")
    graph = tfx.dsl.Importer(source_uri="gs://b/tg", artifact_type=types.TransformGraph).with_id("graph")
    serving_check = ServingCheck(model=model.outputs["result"], examples=examples.outputs["result"],
                                 transform_graph=graph.outputs["result"])
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image="img:1", use_pipeline_spec_2_1=True),
        output_dir=str(tmp_path), output_filename="p.yaml")
    spec = runner.run(tfx.dsl.Pipeline(pipeline_name="p", pipeline_root="gs://b/root",
                                       components=[model, examples, graph, serving_check]), write_out=False)
    task = spec["pipelineSpec"]["root"]["dag"]["tasks"]["ServingCheck"]
    assert set(task["inputs"]["artifacts"]) == {"model", "examples", "transform_graph"}
    outputs = spec["pipelineSpec"]["components"]["ServingCheck"]["outputDefinitions"]["artifacts"]
    assert "InfraBlessing" in json.dumps(outputs["blessing"]["artifactType"])
