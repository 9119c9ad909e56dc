"""The push decision's logic and the baseline lookup (the whole path runs in tests/pipelines/test_gates.py)."""
import os

from components.gates import decide, latest_version_dir

SPARSITY = {"fraction": 0.6, "tables": {"C1": {"fraction": 0.9}, "C2": {"fraction": 0.1}}}


def test_all_pass_without_baseline():
    r = decide({"candidate": 0.80}, True, SPARSITY, 0.7, 0.01, 0.5, {})
    assert r["blessed"] and r["reason"] == "all gates passed"
    assert set(r["gates"]) == {"auc", "sparsity"}


def test_baseline_drop_fails_alone():
    r = decide({"candidate": 0.80, "baseline": 0.83}, False, SPARSITY, 0.7, 0.01, 0.5, {})
    assert not r["blessed"]
    assert r["gates"]["auc_vs_baseline"]["threshold"] == 0.83 - 0.01
    assert [n for n, g in r["gates"].items() if not g["passed"]] == ["auc_vs_baseline"]
    assert "auc_vs_baseline 0.8000 < 0.8200" in r["reason"]


def test_per_table_minimum_and_overall():
    r = decide({"candidate": 0.80}, True, SPARSITY, 0.7, 0.01, 0.7, {"C1": 0.8, "C2": 0.5, "C9": 0.1})
    failed = sorted(n for n, g in r["gates"].items() if not g["passed"])
    assert failed == ["sparsity", "sparsity:C2", "sparsity:C9"]  # C9: no such table -> not measured
    assert "sparsity:C9: not measured" in r["reason"]


def test_max_model_bytes():
    sized = dict(SPARSITY, model_bytes=120_000)
    r = decide({"candidate": 0.80}, True, sized, 0.7, 0.01, 0.5, {}, max_model_bytes=100_000)
    assert not r["blessed"] and r["reason"] == "model_bytes 120000 > 100000"
    assert r["gates"]["model_bytes"] == {"value": 120_000, "threshold": 100_000, "comparison": "<=", "passed": False}
    assert decide({"candidate": 0.80}, True, sized, 0.7, 0.01, 0.5, {}, max_model_bytes=120_000)["blessed"]
    assert "model_bytes" not in decide({"candidate": 0.80}, True, sized, 0.7, 0.01, 0.5, {})["gates"]
    # a model trained before sparsity.json had bytes: not measured, not blessed
    r = decide({"candidate": 0.80}, True, SPARSITY, 0.7, 0.01, 0.5, {}, max_model_bytes=100_000)
    assert not r["blessed"] and "model_bytes: not measured" in r["reason"]


def test_evaluator_verdict_is_never_overridden():
    # TFMA refused (a threshold the gate does not mirror): the decision follows it.
    r = decide({"candidate": 0.80}, False, SPARSITY, 0.7, 0.01, 0.5, {})
    assert not r["blessed"] and "Evaluator did not bless" in r["reason"]


def test_latest_version_dir_ignores_partial_and_temporary(tmp_path):
    base = tmp_path / "ctr"
    assert latest_version_dir(str(base)) is None
    for v in ("5", "12", "30"):
        (base / v).mkdir(parents=True)
    (base / "5" / "saved_model.pb").write_bytes(b"x")
    (base / "12" / "saved_model.pb").write_bytes(b"x")
    (base / ".tmp-40").mkdir()  # an interrupted push, and "30" has no saved_model.pb yet
    assert latest_version_dir(str(base)) == os.path.join(str(base), "12")
