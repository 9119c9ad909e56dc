"""`python -m pipelines score`: the served model's scores on real click logs, streaming metrics, outputs,
and ExampleGen's quarantine. (The same check against a pipeline-pushed model runs in
tests/pipelines/test_local_pipeline.py.)"""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.serving.conftest import save_ctr_model

CRITEO_DEV = os.path.join("criteo", "wide-resdnn", "dev.csv")  # 409 raw Criteo TSV rows
KAGGLE = os.path.join("criteo", "kaggle-2014-criteo", "tr.rx.csv")  # Kaggle CSV with a header


@pytest.fixture(scope="module")
def serving_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("score_serving")
    save_ctr_model(str(base), 3, seed=2)
    return str(base)


def run_score(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_USE_LEGACY_KERAS="1")
    return subprocess.run([sys.executable, "-m", "pipelines", "score", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def score_in_process(capsys, *args):
    """`python -m pipelines score ARGS` in this process (no interpreter start): (exit code, out, err)."""
    from pipelines import cli
    rc = cli.main(["score", *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def served_scores(serving_dir, lines, dataset_format="criteo"):
    """The local TF Serving's REST answers for the lines ExampleGen would accept."""
    from pipelines.demo import examples_from_lines
    from serving.local_server.server import LocalServer
    from serving.rest_client import RestClient
    examples, labels = examples_from_lines(lines, dataset_format)
    with LocalServer(serving_dir, "ctr", rest_port=0, grpc_port=0) as server:
        assert server.repository.poll_once()
        with RestClient(server.rest_url, "ctr") as rest:
            scores = []
            for i in range(0, len(examples), 256):
                scores += rest.predict_examples(examples[i:i + 256])
    return np.array(scores), [int(y) for y in labels]


def exact_auc(scores, labels):
    scores, labels = np.asarray(scores, float), np.asarray(labels)
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return greater / (len(pos) * len(neg))


def test_scores_of_a_real_sample_equal_the_served_models(serving_dir, shared_data, tmp_path):
    data = os.path.join(shared_data, CRITEO_DEV)
    out = tmp_path / "preds.csv"
    proc = run_score("--data", data, "--format", "criteo", "--model", serving_dir, "--output", str(out),
                     "--batch-size", "100")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(out) as f:
        rows = list(csv.DictReader(f))
    lines = open(data, encoding="utf-8").read().splitlines()
    served, labels = served_scores(serving_dir, lines)
    assert len(rows) == len(lines) == len(served) == 409
    ours = np.array([float(r["probability"]) for r in rows])
    np.testing.assert_allclose(ours, served, rtol=0, atol=1e-6)
    assert ours.std() > 1e-3  # the rows do get different scores
    assert [int(r["label"]) for r in rows] == labels
    assert [int(r["line_number"]) for r in rows] == list(range(1, 410))

    summary = json.loads((tmp_path / "preds.csv.summary.json").read_text())
    assert summary["rows_read"] == summary["rows_scored"] == 409 and summary["rows_quarantined"] == 0
    assert summary["model"]["version"] == 3 and summary["model"]["signature"] == "serving_default"
    m = summary["metrics"]
    assert m["example_count"] == 409
    assert m["auc"] == pytest.approx(exact_auc(served, labels), abs=1e-6)
    p = np.clip(served, 1e-7, 1 - 1e-7)
    y = np.array(labels)
    assert m["logloss"] == pytest.approx(float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))), rel=1e-6)
    assert m["calibration"] == pytest.approx(served.sum() / y.sum(), rel=1e-6)
    assert "auc" in proc.stdout and "logloss" in proc.stdout and "calibration" in proc.stdout
    # Quiet: nothing on stderr but our own (non-TTY progress lines are '[   1.2s] ...').
    noise = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith("[")]
    assert noise == [], proc.stderr


def _example_gen_counts(path, spec_name="criteo"):
    """ClickLogExampleGen's own parse of a file (its DoFn, called directly): counts and records."""
    import apache_beam as beam

    from components.click_log_example_gen import parsing
    from components.dataset_spec import load_spec
    fn = parsing._ParseFileFn(load_spec(spec_name).to_json(), 3)
    fn.setup()
    counts, records = None, []
    for out in fn.process(path):
        if isinstance(out, beam.pvalue.TaggedOutput):
            if out.tag == "file_counts":
                counts = out.value
            else:
                records.append(json.loads(out.value))
    return counts, records


def test_bad_lines_are_quarantined_as_example_gen_does(serving_dir, shared_data, tmp_path, capsys):
    good = open(os.path.join(shared_data, CRITEO_DEV), "rb").read().splitlines()[:300]
    bad = [b"1\t2\t3",                                   # wrong_field_count
           b"x" + good[0][1:],                             # bad_label
           b"0\tabc" + b"\t" * 38,                        # non_numeric_int (I1)
           b"0" + b"\t" * 38 + b"z" * 70000,               # oversized_line
           b"0\t\xff\xfe" + b"\t" * 38]                    # undecodable_bytes
    bad += [b"1\t2"] * 4                                   # more wrong_field_count than records kept
    lines = good[:100] + bad + good[100:]
    data = tmp_path / "data"
    data.mkdir()
    path = data / "day.tsv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "preds.tfrecord"
    rc, stdout, stderr = score_in_process(capsys, "--data", str(data), "--format", "criteo", "--model",
                                          os.path.join(serving_dir, "ctr"), "--output", str(out),
                                          "--max-quarantine-records", "3", "--max-bad-fraction", "0.05")
    assert rc == 0, stdout + stderr
    summary = json.loads((tmp_path / "preds.tfrecord.summary.json").read_text())
    counts, records = _example_gen_counts(str(path))
    assert summary["rows_read"] == counts["rows_read"] == 309
    assert summary["rows_scored"] == counts["rows_emitted"] == 300
    assert summary["quarantined_by_reason"] == counts["quarantined_by_reason"] == {
        "wrong_field_count": 5, "bad_label": 1, "non_numeric_int": 1, "oversized_line": 1, "undecodable_bytes": 1}
    assert summary["quarantine_records_dropped"] == counts["records_dropped_by_reason"] == {"wrong_field_count": 2}
    ours = [json.loads(l) for l in open(summary["quarantine"])]
    key = lambda r: (r["line_number"], r["reason"])  # noqa: E731
    assert sorted(ours, key=key) == sorted(records, key=key)  # the same records, field for field
    assert summary["quarantine"].startswith(str(out) + ".quarantine")

    # The TFRecord predictions: one tf.Example per scored row, in file order, labels kept.
    import tensorflow as tf
    examples = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(out))]
    assert len(examples) == 300
    numbers = [e.features.feature["line_number"].int64_list.value[0] for e in examples]
    assert numbers == list(range(1, 101)) + list(range(110, 310))
    probs = [e.features.feature["probability"].float_list.value[0] for e in examples]
    assert all(0 < p < 1 for p in probs)

    # Over the default max_bad_fraction (1%): everything written, exit 1 naming the quarantine.
    rc, _, stderr = score_in_process(capsys, "--data", str(data), "--model", serving_dir,
                                     "--output", str(tmp_path / "p2.csv"))
    assert rc == 1 and "error: 9 of 309 lines" in stderr and ".quarantine" in stderr
    assert (tmp_path / "p2.csv").exists()


def test_header_files_and_unlabeled_metrics(serving_dir, shared_data, tmp_path, capsys):
    # Kaggle CSV: the header line is skipped (not a row), as ExampleGen does; no --output: metrics only.
    rc, stdout, stderr = score_in_process(capsys, "--data", os.path.join(shared_data, KAGGLE), "--format",
                                          "criteo-kaggle", "--model", serving_dir, "--summary", str(tmp_path / "s.json"))
    assert rc == 0, stdout + stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["headers_skipped"] == 1 and summary["rows_scored"] == 1999
    assert summary["metrics"]["example_count"] == 1999 and 0 < summary["metrics"]["auc"] < 1
    assert summary["predictions"] is None


@pytest.mark.parametrize("args,message", [
    (["--model", "MISSING"], "no such directory"),
    (["--model", "EMPTY"], "no SavedModel version under it"),
    (["--version", "9"], "no version 9 (found 3)"),
    (["--output", "OUT/p.json"], "name it .csv or .tfrecord"),
    (["--data", "MISSING"], "no such file or directory"),
    (["--format", "nosuch"], "nosuch"),
])
def test_bad_arguments_are_one_line_errors(serving_dir, tmp_path, capsys, args, message):
    from pipelines import cli
    (tmp_path / "empty").mkdir()
    data = tmp_path / "d.tsv"
    data.write_text("0" + "\t" * 39 + "\n")
    subst = {"MISSING": str(tmp_path / "missing"), "EMPTY": str(tmp_path / "empty"), "OUT": str(tmp_path)}
    argv = {"--data": str(data), "--model": serving_dir}
    for option, value in zip(args[::2], args[1::2]):
        argv[option] = subst.get(value.split("/")[0], value.split("/")[0]) + (
            "/" + value.split("/", 1)[1] if "/" in value else "")
    flat = [x for kv in argv.items() for x in kv]
    assert cli.main(["score"] + flat) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err, err


def test_streaming_auc_matches_the_exact_auc():
    from pipelines.score import StreamingMetrics
    rng = np.random.default_rng(0)
    scores = rng.random(20000).astype(np.float32).astype(np.float64)
    labels = (rng.random(20000) < scores).astype(int)
    m = StreamingMetrics()
    for i in range(0, 20000, 3000):
        m.add(scores[i:i + 3000], labels[i:i + 3000])
    assert m.auc() == pytest.approx(exact_auc(scores, labels), abs=1e-6)
    assert m.result()["example_count"] == 20000
    one_class = StreamingMetrics()
    one_class.add(np.array([0.2, 0.4]), np.array([0, 0]))
    assert one_class.auc() is None and one_class.result()["calibration"] is None
