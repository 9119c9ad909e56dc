"""The whole local pipeline on a small generated set: every component's artifact, the summary and the
pushed SavedModel scored through TF Serving's conventions."""
import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e

ROWS = 3000


def run_cli(*args, timeout=900, **env_vars):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_USE_LEGACY_KERAS="1", **env_vars)
    return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    tmpdir = tmp_path_factory.mktemp("demo-tmpdir")  # what the run leaves in the machine's temp folder
    proc = run_cli("run", "--rows", str(ROWS), "--output", str(out), "--epochs", "2", "--score-rows", "3",
                   TMPDIR=str(tmpdir))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "summary.json") as f:
        summary = json.load(f)
    proc.tmpdir = tmpdir
    return out, summary, proc


def test_run_leaves_no_temporary_files(demo_run):
    # TFX's per-Beam-component tfx_ephemeral sdist (49 MB) and Beam's pipeline temp folders went to
    # the temp folder and stayed there: the run now writes them under <output>/.scratch and removes them.
    out, _, proc = demo_run
    left = [os.path.relpath(os.path.join(r, n), proc.tmpdir) for r, ds, fs in os.walk(proc.tmpdir) for n in ds + fs]
    assert not [p for p in left if "tfx_ephemeral" in p or "beam-pipeline-temp" in p], left[:20]
    assert os.listdir(out / ".scratch") == []


def _artifacts(out):
    from pipelines.summary import _latest_run_artifacts
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(out / "metadata.sqlite")
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    _, by_type = _latest_run_artifacts(metadata_store.MetadataStore(config), "sparsectr")
    return by_type


def _eval_examples(examples_uri, n):
    import tensorflow as tf
    files = glob.glob(os.path.join(examples_uri, "Split-eval", "*.gz"))
    assert files, f"no eval split under {examples_uri}"
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").take(n)
    return [r.numpy() for r in ds]


def test_every_component_wrote_its_artifact(demo_run):
    out, summary, _ = demo_run
    arts = _artifacts(out)
    for type_name in ("Examples", "ExampleStatistics", "Schema", "ExampleAnomalies", "TransformGraph",
                      "Model", "ModelRun", "ModelEvaluation", "ModelBlessing", "sparsectr.GateReport",
                      "InfraBlessing", "sparsectr.ServingCheckReport", "PushedModel"):
        assert arts.get(type_name), f"no {type_name} artifact in the run"
    raw = [a for a in arts["Examples"] if "rows_read" in a.custom_properties][0]
    for split in ("train", "eval"):
        assert glob.glob(os.path.join(raw.uri, f"Split-{split}", "*.gz")), split
    stats = arts["ExampleStatistics"][0].uri
    assert os.path.exists(os.path.join(stats, "Split-train", "FeatureStats.pb"))
    assert os.path.exists(os.path.join(arts["Schema"][0].uri, "schema.pbtxt"))
    assert os.path.isdir(os.path.join(arts["TransformGraph"][0].uri, "transform_fn"))
    trained = [a for a in arts["Model"] if "found" not in a.custom_properties]
    baseline = [a for a in arts["Model"] if "found" in a.custom_properties]
    assert len(trained) == 1 and len(baseline) == 1
    assert baseline[0].custom_properties["found"].int_value == 0  # first run: nothing pushed before
    model = trained[0].uri
    assert os.path.exists(os.path.join(model, "Format-Serving", "saved_model.pb"))
    assert os.path.exists(os.path.join(model, "sparsity.json"))
    # The Evaluator's blessing and the SparsityGate's (the one the Pusher follows).
    assert len(arts["ModelBlessing"]) == 2
    assert all(b.custom_properties["blessed"].int_value == 1 for b in arts["ModelBlessing"])
    report = json.load(open(os.path.join(arts["sparsectr.GateReport"][0].uri, "gate_report.json")))
    assert report["blessed"] and set(report["gates"]) == {"auc", "sparsity"}
    # The ServingCheck served the candidate and blessed it; the Pusher published exactly those files.
    (infra,) = arts["InfraBlessing"]
    assert infra.custom_properties["blessed"].int_value == 1
    from components.pruned_pusher.pruning import manifest
    (pushed,) = arts["PushedModel"]
    version_dir = pushed.custom_properties["pushed_destination"].string_value
    published = {k: v for k, v in manifest(version_dir).items() if not k.startswith("warm_start/")}
    assert published == manifest(os.path.join(infra.uri, "stamped_model"))


def test_summary_has_every_stage(demo_run):
    out, summary, proc = demo_run
    assert summary["status"] == "succeeded"
    ing = summary["ingestion"]
    assert ing["rows_read"] == ROWS == ing["rows_emitted"] + ing["rows_quarantined"]
    assert summary["validation"]["count"] == 0
    tr = summary["training"]
    assert tr["steps"] > 0 and 0.0 <= tr["sparsity"]["fraction"] <= 1.0
    assert set(tr["sparsity"]["tables"]) == {f"C{i}" for i in range(1, 27)}
    ev = summary["evaluation"]
    assert 0.5 < ev["auc"] <= summary["bayes_auc"] + 0.03
    assert ev["binary_crossentropy"] > 0 and ev["example_count"] > 0
    assert summary["push"]["pushed"] is True and summary["push"]["size_bytes"] > 0
    # The ServingCheck's report is in the gates block, every limit measured and passed.
    check = summary["gates"]["serving_check"]
    assert check["passed"] and check["measured"]["warmup_requests"] > 0, check
    assert set(check["checks"]) == {"load_s", "peak_rss_mb", "p99_latency_ms", "max_score_diff"}
    assert all(c["passed"] for c in check["checks"].values())
    assert "serving check: loaded in" in proc.stdout
    # The readable form goes to stdout.
    assert "SUCCEEDED" in proc.stdout and "pushed:" in proc.stdout
    # The demo step scored rows through the local TF Serving process, REST and gRPC agreeing.
    demo = summary["demo_scores"]
    assert "error" not in demo, demo
    assert len(demo["rest"]) == 3 and demo["rest"] == demo["grpc"]
    assert str(demo["model_version"]) == str(summary["push"]["version"])


def test_pushed_model_scores_serialized_examples(demo_run):
    import tensorflow as tf
    out, summary, _ = demo_run
    versions = glob.glob(str(out / "serving" / "ctr" / "*"))
    assert len(versions) == 1 and os.path.basename(versions[0]).isdigit()
    assert versions[0] == summary["push"]["path"].rstrip("/")
    loaded = tf.saved_model.load(versions[0])
    serving = loaded.signatures["serving_default"]
    assert list(serving.structured_input_signature[1]) == ["examples"]
    batch = _eval_examples(summary["ingestion"]["examples_uri"], 64)
    scores = serving(examples=tf.constant(batch))["probability"].numpy()
    assert scores.shape == (len(batch),)
    assert np.all((scores > 0) & (scores < 1)) and scores.std() > 1e-4

    # predict_raw on the same rows, built from the parsed raw features, gives the same scores.
    raw = {}
    examples = [tf.train.Example.FromString(b) for b in batch]
    for i in range(1, 14):
        raw[f"I{i}"] = tf.constant([e.features.feature[f"I{i}"].int64_list.value[0]
                                    if e.features.feature[f"I{i}"].int64_list.value else 0 for e in examples], tf.int64)
    for i in range(1, 27):
        raw[f"C{i}"] = tf.constant([e.features.feature[f"C{i}"].bytes_list.value[0]
                                    if e.features.feature[f"C{i}"].bytes_list.value else b"" for e in examples])
    raw_scores = loaded.signatures["predict_raw"](**raw)["probability"].numpy()
    np.testing.assert_allclose(raw_scores, scores, atol=1e-6)


def test_drifted_day_stops_before_training(tmp_path):
    # A whole day without column C5 (an upstream logging change): the curated schema flags it and
    # the run stops before Transform, with the anomaly in the summary and nothing pushed.
    from pipelines import generator
    data = tmp_path / "data"
    report = generator.generate(str(data), 1500)
    lines = open(report["path"]).read().splitlines()
    with open(report["path"], "w") as f:
        for line in lines:
            fields = line.split("\t")
            fields[14 + 4] = ""  # C5
            f.write("\t".join(fields) + "\n")
    out = tmp_path / "out"
    proc = run_cli("run", "--data", str(data), "--output", str(out))
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.load(open(out / "summary.json"))
    assert summary["status"] == "failed"
    assert "anomal" in summary["error"] and "C5" in summary["error"]
    assert any(k.endswith(":C5") for k in summary["validation"]["anomalies"])
    assert "training" not in summary and not summary.get("push")
    assert not os.path.exists(out / "serving")
    assert "FAILED" in proc.stdout and "C5" in proc.stdout


def test_next_span_warm_starts_from_the_pushed_model_and_pushes_through_the_gates(demo_run, tmp_path):
    # A scheduled run: the next day's span lands beside the first; the run reads only the newest
    # span, warm-starts from the pushed model (its weights, Group Adam slots and vocabulary) and,
    # with half the first run's steps, must at least match the pushed model's AUC on the new day's
    # eval rows (the Evaluator's change threshold, max_auc_drop 0, both models on the same rows).
    import shutil

    import yaml

    from pipelines import generator
    first_out, first, _ = demo_run
    out = tmp_path / "out"
    shutil.copytree(first_out / "serving", out / "serving")
    data = tmp_path / "data"
    shutil.copytree(first_out / "generated" / "data", data)
    generator.generate(str(data), ROWS, span=1, truth_path=str(tmp_path / "truth.json"))
    config = tmp_path / "next.yaml"
    half = first["training"]["steps"] // 2
    # Transform writes no transformed examples here: the Trainer transforms ExampleGen's per batch.
    config.write_text(yaml.safe_dump({"data": {"input_pattern": "clicks-{SPAN:5}.tsv", "materialize_transformed": False},
                                      # XLA is exercised by the first run; this one saves its compile time.
                                      "trainer": {"train_steps": half, "jit_compile": False},
                                      "gates": {"max_auc_drop": 0.0}}))
    proc = run_cli("run", "--data", str(data), "--output", str(out), "--config", str(config))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.load(open(out / "summary.json"))

    assert summary["ingestion"]["span"] == 1 and summary["ingestion"]["rows_read"] == ROWS
    warm = summary["training"]["warm_start"]
    assert warm["restored"] and warm["optimizer_state"], warm
    # From the version the first run pushed (the serving folder was copied to this output).
    assert warm["pushed_model"] == str(out / "serving" / "ctr" / first["push"]["version"])
    assert summary["baseline"]["path"] == warm["pushed_model"]
    assert warm["steps_before"] == first["training"]["steps"]
    assert summary["training"]["steps"] == half and half * 2 <= first["training"]["steps"]
    # The vocabulary of the new day differs: rows were matched by value, new values start fresh.
    assert warm["rows_carried"] > 0 and warm["rows_new"] > 0
    gate = summary["gates"]["gates"]["auc_vs_baseline"]
    assert summary["baseline"]["found"] and gate["passed"] and gate["value"] >= gate["baseline"], gate
    assert summary["push"]["pushed"] and summary["push"]["version"] != first["push"]["version"]
    versions = sorted(p.name for p in (out / "serving" / "ctr").iterdir() if p.name.isdigit())
    assert versions == sorted([first["push"]["version"], summary["push"]["version"]])
    assert "warm start: from" in proc.stdout
    assert glob.glob(str(out / "**" / "Transform" / "transform_graph"), recursive=True)
    assert not glob.glob(str(out / "**" / "Transform" / "transformed_examples"), recursive=True)


# Our own lines: progress ('[  12.3s] Transform finished'), the summary ('sparsectr run ...' and its
# '  key: ...' lines). Everything else is library output; `make demo` allows ~25 such lines (issue #23).
OWN_LINE = re.compile(r"^\[\s*\d+\.\d+s\] |^sparsectr run |^  [a-z][^:]{0,60}: ")


def test_run_output_is_quiet(demo_run):
    _, _, proc = demo_run
    lines = [l for l in proc.stdout.splitlines() + proc.stderr.splitlines() if l.strip()]
    others = [l for l in lines if not OWN_LINE.match(l)]
    assert len(others) <= 25, f"{len(others)} lines that are not ours:\n" + "\n".join(others)
    assert "Traceback" not in proc.stderr
    stages = [l for l in proc.stderr.splitlines() if re.match(r"^\[\s*\d+\.\d+s\] \w+ (running|finished)", l)]
    assert any("ClickLogExampleGen finished: rows read 3,000, emitted 3,000, quarantined 0" in l for l in stages), stages
    assert any(re.search(r"Trainer epoch 1/2: \d+ steps in \d+s", l) for l in proc.stderr.splitlines()), proc.stderr


def test_report_opens_in_a_browser_with_its_plots(demo_run, tmp_path):
    from tests.pipelines.test_report import assert_renders_with_plots
    out, summary, proc = demo_run
    path = out / "report.html"
    assert summary["report"] == str(path) and f"report: {path}" in proc.stdout
    text = path.read_text()
    assert summary["push"]["version"] in text and 'id="decision">BLESSED<' in text
    assert 'id="bayes-auc">' in text  # generated data: the Bayes-optimal line
    assert_renders_with_plots(str(path), tmp_path, plots=2)


def test_score_command_gives_the_served_models_scores(demo_run, shared_data, tmp_path):
    # Batch scoring of a real Criteo sample with the pushed model equals the local TF Serving's answers.
    from tests.pipelines.test_score import run_score, served_scores
    out, summary, _ = demo_run
    data = os.path.join(shared_data, "criteo", "wide-resdnn", "dev.csv")
    preds = tmp_path / "preds.csv"
    proc = run_score("--data", data, "--format", "criteo", "--model", str(out / "serving"), "--output", str(preds))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import csv
    ours = np.array([float(r["probability"]) for r in csv.DictReader(open(preds))])
    served, _ = served_scores(str(out / "serving"), open(data, encoding="utf-8").read().splitlines())
    assert len(ours) == len(served) == 409
    np.testing.assert_allclose(ours, served, rtol=0, atol=1e-6)
    result = json.loads((tmp_path / "preds.csv.summary.json").read_text())
    assert str(result["model"]["version"]) == str(summary["push"]["version"])
    assert 0.5 < result["metrics"]["auc"] < 1


def test_run_report_artifact_for_the_kubeflow_ui(demo_run, tmp_path):
    # The RunReport step's system.HTML artifact: the same report, a file at the artifact's URI
    # (what the Kubeflow Pipelines UI reads), rendered by a real browser with its plots.
    from tests.pipelines.test_report import assert_renders_with_plots
    out, summary, _ = demo_run
    reports = _artifacts(out).get("system.HTML")
    assert reports and len(reports) == 1
    path = reports[0].uri
    assert os.path.isfile(path)
    text = open(path).read()
    assert 'id="decision">BLESSED<' in text and summary["push"]["version"] in text
    html_copy = tmp_path / "report.html"
    html_copy.write_text(text)
    assert_renders_with_plots(str(html_copy), tmp_path, plots=2)


def test_bulk_inferrer_scores_the_examples_with_the_trained_model(demo_run, tmp_path):
    # scoring.bulk_inference adds TFX's BulkInferrer; its executor, run here on this run's examples
    # and model, gives the model's serving_default scores for every eval row.
    import tensorflow as tf
    from tfx.components.bulk_inferrer import executor as bulk_executor
    from tfx.proto import bulk_inferrer_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils
    out, summary, _ = demo_run
    arts = _artifacts(out)
    examples = [a for a in arts["Examples"] if "rows_read" in a.custom_properties][0]
    model = [a for a in arts["Model"] if "found" not in a.custom_properties][0]
    blessing = [b for b in arts["ModelBlessing"] if b.custom_properties["blessed"].int_value == 1][-1]

    def tfx_artifact(cls, mlmd):
        a = cls()
        a.set_mlmd_artifact(mlmd)
        return a
    ex = tfx_artifact(standard_artifacts.Examples, examples)
    result = standard_artifacts.InferenceResult()
    result.uri = str(tmp_path / "inference")
    bulk_executor.Executor().Do(
        {"examples": [ex], "model": [tfx_artifact(standard_artifacts.Model, model)],
         "model_blessing": [tfx_artifact(standard_artifacts.ModelBlessing, blessing)]},
        {"inference_result": [result]},
        {"data_spec": proto_utils.proto_to_json(bulk_inferrer_pb2.DataSpec(example_splits=["eval"])),
         "model_spec": proto_utils.proto_to_json(bulk_inferrer_pb2.ModelSpec(model_signature_name=["serving_default"]))})
    from tensorflow_serving.apis import prediction_log_pb2
    files = glob.glob(str(tmp_path / "inference" / "*"))
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    assert len(logs) == summary["evaluation"]["example_count"]
    first = logs[0].predict_log
    served = tf.saved_model.load(summary["push"]["path"]).signatures["serving_default"]
    example = first.request.inputs["examples"].string_val[0]
    expected = served(examples=tf.constant([example]))["probability"].numpy()[0]
    got = tf.make_ndarray(first.response.outputs["probability"]).reshape(-1)[0]
    assert abs(float(got) - float(expected)) < 1e-6

