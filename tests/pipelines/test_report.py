"""The run report (pipelines/report.py): its content, its plots, and that a real browser renders them."""
import copy
import io
import os
import shutil
import subprocess

import pytest

from pipelines import report

SUMMARY = {
    "run_id": "2026-11-30T06:34:08", "status": "succeeded", "duration_s": 170.0,
    "data_root": "/data/generated", "dataset_format": "criteo",
    "bayes_auc": 0.8397, "bayes_logloss": 0.4122,
    "ingestion": {"rows_read": 3010, "rows_emitted": 3000, "rows_quarantined": 10,
                  "quarantined_by_reason": {"bad_label": 4, "wrong_field_count": 6}, "negative_ints_by_field": {"I2": 17},
                  "quarantine_uri": "/out/pipeline_root/ClickLogExampleGen/examples/1/quarantine", "span": 0},
    "validation": {"anomalies": {}, "count": 0},
    "training": {"model": "dnn", "optimizer": "group_adam", "steps": 40, "epochs": 3, "fit_seconds": 50.2,
                 "history": {"auc": [0.52, 0.61, 0.66], "val_auc": [0.60, 0.63, 0.62],
                             "loss": [0.58, 0.54, 0.52], "val_loss": [0.56, 0.55, 0.555]},
                 "early_stopping": {"best_epoch": 2, "epochs_run": 3, "monitor": "val_auc"},
                 "warm_start": {"restored": False, "reason": "no pushed model yet"},
                 "sparsity": {"fraction": 0.42, "rows": 100, "zero_rows": 42, "tables": {
                     f"C{i}": {"fraction": i / 30, "rows": 10, "zero_rows": i // 3} for i in range(1, 27)}}},
    "evaluation": {"auc": 0.6262, "binary_crossentropy": 0.5592, "calibration": 0.8578, "example_count": 607.0},
    "gates": {"blessed": True, "evaluator_blessed": True, "reason": "all gates passed", "gates": {
        "auc": {"passed": True, "threshold": 0.6, "value": 0.6262},
        "sparsity": {"passed": True, "threshold": 0.1, "value": 0.42}},
        "serving_check": {"passed": True, "checks": {
            "p99_latency_ms": {"limit": 1000.0, "passed": True, "value": 11.208},
            "max_score_diff": {"limit": 1e-05, "passed": True, "value": 1.19e-07}}}},
    "push": {"pushed": True, "path": "/out/serving/ctr/1796021020", "version": "1796021020",
             "size_before_bytes": 1414869, "size_after_bytes": 1302575, "size_bytes": 1302575,
             "embedding_bytes_before": 23040, "embedding_bytes_after": 13000, "embedding_rows": 720,
             "embedding_rows_dropped": 300, "compacted_tables": 4, "parity_max_abs_error": 1.2e-7,
             "warmup_requests": 607, "models_config": "/out/serving/models.config"},
}


def _png_size(data: bytes):
    from PIL import Image
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def test_report_has_every_section_and_its_plots(tmp_path):
    path = report.write(SUMMARY, str(tmp_path / "report.html"))
    text = open(path, encoding="utf-8").read()
    # The gate decision with each check's value and threshold.
    assert 'id="decision">BLESSED<' in text
    assert "<td>auc</td><td>0.6262</td><td>&gt;= 0.6000</td>" in text
    assert "<td>sparsity</td><td>0.4200</td><td>&gt;= 0.1000</td>" in text
    assert "<td>serving check: max_score_diff</td><td>1.19e-07</td><td>&lt;= 1e-05</td>" in text
    # AUC and loss per epoch, and the Bayes-optimal line of generated data.
    assert "<td>3</td><td>0.6600</td><td>0.6200</td><td>0.5200</td><td>0.5550</td>" in text
    assert 'id="bayes-auc">0.8397<' in text and "kept epoch 2 of 3" in text
    # The push (sizes before/after, parity, version) and the ingestion with the quarantine's location.
    assert "1796021020" in text and "1.415 MB" in text and "1.303 MB" in text and "1.2e-07" in text
    assert "0.023 MB &rarr; 0.013 MB" in text and "300 of 720" in text
    assert "<td>rows quarantined</td><td>10</td>" in text and "bad_label" in text
    assert "/out/pipeline_root/ClickLogExampleGen/examples/1/quarantine" in text
    # Two PNG plots (history with the Bayes line, sparsity per table), valid images.
    plots = report.plots_in(text)
    assert len(plots) == 2
    for png in plots:
        width, height = _png_size(png)
        assert width > 300 and height > 150


def test_report_of_a_failed_run(tmp_path):
    failed = {"run_id": "r", "status": "failed", "error": "ValidationGate: 1 anomaly: C5 (column dropped)",
              "validation": {"count": 1, "anomalies": {"C5": "column dropped"}},
              "ingestion": SUMMARY["ingestion"]}
    text = report.render(failed)
    assert 'id="status">FAILED<' in text and "ValidationGate: 1 anomaly" in text
    assert "stopped before the gates" in text and "No model was trained" in text
    assert report.plots_in(text) == []
    not_pushed = copy.deepcopy(SUMMARY)
    not_pushed["gates"]["blessed"] = False
    not_pushed["gates"]["gates"]["auc"].update(passed=False, value=0.55)
    not_pushed["push"] = {"pushed": False, "reason": "auc 0.55 < 0.60"}
    text = report.render(not_pushed)
    assert 'id="decision">NOT BLESSED<' in text and "Not pushed: auc 0.55 &lt; 0.60" in text
    assert "<td>auc</td><td>0.5500</td><td>&lt; 0.6000</td>" in text


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless Chromium on PATH (Debian: apt-get install chromium)")


def open_in_chromium(path: str, tmp_path) -> str:
    """The DOM of ``path`` after headless Chromium loaded it and ran its scripts."""
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=10000",
         "--dump-dom", "file://" + os.path.abspath(path)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def screenshot(path: str, png: str, tmp_path, size="1100,2400") -> None:
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    f"--user-data-dir={tmp_path / 'chromium-shot'}", "--hide-scrollbars", f"--window-size={size}",
                    f"--screenshot={png}", "file://" + os.path.abspath(path)],
                   capture_output=True, timeout=120, check=True)


def assert_renders_with_plots(path: str, tmp_path, plots: int = 2) -> None:
    """Headless Chromium decoded every plot of the report (the page's own count, set on load)."""
    import re
    dom = open_in_chromium(path, tmp_path)
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert f'data-plots-loaded="{plots}"' in body and 'data-plots-broken="0"' in body, body
    assert "Gates:" in dom


def test_report_opens_in_a_headless_browser_with_its_plots(tmp_path):
    path = report.write(SUMMARY, str(tmp_path / "report.html"))
    assert_renders_with_plots(path, tmp_path)
    # And a screenshot shows them: the plots are not blank.
    png = str(tmp_path / "shot.png")
    screenshot(path, png, tmp_path)
    from PIL import Image
    with Image.open(png) as image:
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors and len(colors) > 50  # text, tables, lines and bars in many colours


def test_a_broken_plot_is_noticed(tmp_path):
    # The in-page check is not vacuous: a PNG the browser cannot decode is counted as broken.
    text = report.render(SUMMARY)
    good = report.plots_in(text)[0]
    import base64
    broken = text.replace(base64.b64encode(good).decode(), base64.b64encode(b"not a png").decode(), 1)
    path = tmp_path / "broken.html"
    path.write_text(broken)
    dom = open_in_chromium(str(path), tmp_path)
    assert 'data-plots-loaded="1"' in dom and 'data-plots-broken="1"' in dom


def test_report_and_bulk_inference_steps_in_the_pipeline(tmp_path):
    # RunReport always follows the push; BulkInferrer only with scoring.bulk_inference. On Kubeflow the
    # report is a system.HTML artifact (what the KFP UI renders), importable back as system.HTML.
    import yaml

    from pipelines import kubeflow_compile
    from pipelines.config import load_config
    from pipelines.pipeline import create_pipeline
    from system import HTML
    config = load_config(None, {"output_dir": str(tmp_path)})
    ids = [c.id for c in create_pipeline(config, str(tmp_path)).components]
    assert ids[-1] == "RunReport" and "BulkInferrer" not in ids
    config = load_config(None, {"output_dir": str(tmp_path), "scoring": {"bulk_inference": True}})
    ids = [c.id for c in create_pipeline(config, str(tmp_path)).components]
    assert "BulkInferrer" in ids and "RunReport" in ids
    assert HTML.TYPE_NAME == "system.HTML"

    config = load_config(None, {"output_dir": str(tmp_path), "data": {"data_root": "gs://b/clicks"},
                                "serving": {"serving_dir": "gs://b/models"}})
    path = kubeflow_compile.compile_pipeline(config, str(tmp_path / "p.yaml"))
    spec = yaml.safe_load(open(path))
    outputs = spec["components"]["comp-RunReport" if "comp-RunReport" in spec["components"] else "RunReport"]
    schema = outputs["outputDefinitions"]["artifacts"]["report"]["artifactType"]
    title = schema.get("schemaTitle") or yaml.safe_load(schema["instanceSchema"])["title"]
    assert title == "system.HTML"
