"""The paper-reproduction runner (benchmarks/paper_repro.py): a quick end-to-end run, and checks on the
committed results and report."""
import json
import os
import re

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "paper_repro.json")
REPORT = os.path.join(ROOT, "docs", "results.md")
PLOT = os.path.join(ROOT, "docs", "auc_vs_sparsity.png")

DATASETS = ("criteo", "avazu", "generated")
MODELS = ("dnn", "deepfm")


@pytest.fixture(scope="module")
def committed():
    with open(RESULTS) as f:
        return json.load(f)


@pytest.mark.e2e
def test_quick_run_writes_report_and_plot(tmp_path):
    from benchmarks import paper_repro as pr
    out = tmp_path / "out"
    rc = pr.main(["--quick", "--cache-dir", str(tmp_path / "cache"), "--json", str(out / "r.json"),
                  "--report", str(out / "results.md"), "--plot", str(out / "auc.png")])
    assert rc == 0
    results = json.loads((out / "r.json").read_text())
    methods = {r["method"] for r in results["runs"]}
    assert methods == set(pr.METHODS), methods
    for r in results["runs"]:
        assert 0.0 < r["auc"] < 1.0 and 0.0 <= r["sparsity"] <= 1.0
    # The paired pruning hits the Group run's sparsity (to one row).
    for r in results["runs"]:
        if r["method"] == "adam_rowprune":
            assert abs(r["sparsity"] - r["target_sparsity"]) <= 1.0 / r["rows"] + 1e-12
    gen = results["datasets"]["generated"]
    assert 0.5 < gen["bayes_auc_test"] < 1.0
    group = [r for r in results["runs"] if r["method"] == "group_adam"]
    assert group and all(0.0 <= r["precision"] <= 1.0 and 0.0 <= r["recall"] <= 1.0 for r in group)
    text = (out / "results.md").read_text()
    assert "### generated / dnn" in text and "Bayes-optimal AUC" in text
    png = (out / "auc.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_committed_results_cover_every_dataset_model_method(committed):
    from benchmarks.paper_repro import METHODS
    present = {(r["dataset"], r["model"], r["method"]) for r in committed["runs"]}
    missing = [(d, m, k) for d in DATASETS for m in MODELS for k in METHODS if (d, m, k) not in present]
    assert not missing, missing
    for r in committed["runs"]:
        assert 0.0 <= r["sparsity"] <= 1.0, r
        assert 0.0 < r["auc"] < 1.0, r
        assert np.isfinite(r["logloss"]) and r["size_bytes"] > 0, r


def test_committed_results_have_three_seeds_per_point(committed):
    points = {}
    for r in committed["runs"]:
        key = (r["dataset"], r["model"], r["method"], r.get("matched_to"), r.get("l21"))
        points.setdefault(key, set()).add(r["seed"])
    thin = {k: v for k, v in points.items() if len(v) < 3}
    assert not thin, thin
    # Each Group point reaches a sparsity that the paired pruning matched.
    for r in committed["runs"]:
        if r["method"] == "adam_rowprune":
            assert abs(r["sparsity"] - r["target_sparsity"]) <= 1.0 / r["rows"] + 1e-12, r
    gen = committed["datasets"]["generated"]
    assert 0.5 < gen["bayes_auc_test"] < 1.0
    best = max(r["auc"] for r in committed["runs"] if r["dataset"] == "generated")
    assert best <= gen["bayes_auc_test"] + 0.01  # nothing beats the ceiling (beyond test noise)


def test_committed_report_is_rendered_from_committed_json(committed):
    from benchmarks import paper_repro as pr
    with open(REPORT) as f:
        text = f.read()
    assert text == pr.render_markdown(committed, committed["command"])
    assert os.path.getsize(PLOT) > 10000


def _table_rows(text, heading):
    section = text.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| group_")]


def test_report_table_values_equal_the_json(committed):
    """Recompute every headline cell from the raw runs, independently of the renderer."""
    with open(REPORT) as f:
        text = f.read()
    runs = committed["runs"]
    checked = 0
    for ds in DATASETS:
        for model in MODELS:
            rows = _table_rows(text, f"{ds} / {model}")
            assert rows, (ds, model)
            for line in rows:
                cells = [c.strip() for c in line.strip("|").split("|")]
                method, l21 = cells[0], float(cells[1])
                group = sorted((r for r in runs if (r["dataset"], r["model"], r["method"]) == (ds, model, method)
                                and r["l21"] == l21), key=lambda r: r["seed"])
                pruned = {r["seed"]: r for r in runs if (r["dataset"], r["model"], r["method"]) ==
                          (ds, model, "adam_rowprune") and r["matched_to"] == method and r["l21"] == l21}
                assert len(group) >= 3
                g_auc = np.array([r["auc"] for r in group])
                p_auc = np.array([pruned[r["seed"]]["auc"] for r in group])
                sparsity = np.array([r["sparsity"] for r in group])

                def mean_sd(cell):
                    m = re.match(r"([-\d.]+) ± ([\d.]+)", cell)
                    return float(m.group(1)), float(m.group(2))

                assert mean_sd(cells[2]) == pytest.approx((sparsity.mean(), sparsity.std(ddof=1)), abs=6e-4)
                assert mean_sd(cells[3]) == pytest.approx((g_auc.mean(), g_auc.std(ddof=1)), abs=6e-5)
                assert mean_sd(cells[4]) == pytest.approx((p_auc.mean(), p_auc.std(ddof=1)), abs=6e-5)
                delta = float(cells[6].split(" ± ")[0])
                assert delta == pytest.approx(g_auc.mean() - p_auc.mean(), abs=6e-5)
                spread = max(g_auc.std(ddof=1), p_auc.std(ddof=1))
                diffs = g_auc - p_auc
                beyond = abs(g_auc.mean() - p_auc.mean()) > spread and (np.all(diffs > 0) or np.all(diffs < 0))
                assert ("beyond spread" in cells[8] and "no difference" not in cells[8]) == bool(beyond), line
                checked += 1
    assert checked >= len(DATASETS) * len(MODELS) * 2


def _part(tmp_path, name, models, train_rows=1000, l21=(1e-3,)):
    settings = {"seeds": 3, "embedding_dim": 8, "hidden_units": [64, 32], "tfmot": True, "jit_compile": False,
                "models": list(models), "learning_rate": 0.005, "adagrad_learning_rate": 0.05,
                "group_adam_l21": list(l21), "group_adagrad_l21": [0.05], "generated_rows": train_rows,
                "generated_test_rows": 100, "epochs_generated": 1, "batch_size_generated": 1024}
    info = {"train_rows": train_rows, "test_rows": 100, "table_rows": 50, "steps": 1,
            "group_adam_l21": list(l21)}
    runs = [{"dataset": "generated", "model": m, "method": "adam", "seed": s, "auc": 0.7} for m in models
            for s in range(3)]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"settings": settings, "datasets": {"generated": info}, "runs": runs,
                                "command": f"cmd {name}", "wall_seconds": 60.0}))
    return str(path)


def test_merge_joins_model_blocks_of_one_dataset_and_refuses_overlaps(tmp_path):
    from benchmarks.paper_repro import merge_results
    merged = merge_results([_part(tmp_path, "a", ["dnn"]), _part(tmp_path, "b", ["deepfm"])])
    assert merged["settings"]["models"] == ["dnn", "deepfm"]
    assert merged["commands"] == ["cmd a", "cmd b"]
    assert {(r["model"], r["seed"]) for r in merged["runs"]} == {(m, s) for m in ("dnn", "deepfm") for s in range(3)}
    assert merged["datasets"]["generated"]["group_adam_l21"] == [1e-3]
    assert merged["datasets"]["generated"]["adagrad_learning_rate"] == 0.05  # filled from the part's settings
    with pytest.raises(ValueError, match="in two parts"):
        merge_results([_part(tmp_path, "a", ["dnn"]), _part(tmp_path, "c", ["dnn"])])
    with pytest.raises(ValueError, match="differs between parts"):
        merge_results([_part(tmp_path, "a", ["dnn"]), _part(tmp_path, "d", ["deepfm"], l21=(3e-3,))])
