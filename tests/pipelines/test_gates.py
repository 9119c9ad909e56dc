"""The push gate end to end in the local pipeline: each gate failing alone, both failing, both
passing, with and without a baseline; a run that is not blessed leaves the serving directory as it was."""
import json
import os

import pytest
import yaml

from tests.conftest import SHARED_DATA
from tests.pipelines.test_local_pipeline import run_cli

pytestmark = pytest.mark.e2e

ROWS = 2000
# min_compact_bytes 0: every table whose zero rows outweigh its row map is compacted, so the parity
# check runs on compacted tables even at these small sizes.
FAST = {"trainer": {"epochs": 1, "jit_compile": False}, "serving": {"min_compact_bytes": 0}}


def _serving_state(out):
    base = out / "serving" / "ctr"
    if not base.exists():
        return {}
    return {str(p.relative_to(base)): p.stat().st_mtime_ns for p in base.rglob("*")}


def _run(tmp_path, data, out, name, gates):
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(dict(FAST, gates=gates)))
    before = _serving_state(out)
    proc = run_cli("run", "--data", str(data), "--output", str(out), "--config", str(config))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.load(open(out / "summary.json"))
    return summary, before, _serving_state(out), proc


def _failed(summary):
    return sorted(n for n, g in summary["gates"]["gates"].items() if not g["passed"])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Real Criteo rows (the first 2,000 of ../shared/data's sample): every gate run, and the push's
    pruning parity check, on real data."""
    source = os.path.join(SHARED_DATA, "criteo", "wide-resdnn", "train.csv")
    if not os.path.exists(source):
        pytest.skip(f"real Criteo sample not found at {source}")
    root = tmp_path_factory.mktemp("gates") / "data"
    root.mkdir()
    with open(source) as f, open(root / "criteo-day.tsv", "w") as out:
        out.writelines(line for _, line in zip(range(ROWS), f))
    return root


@pytest.fixture(scope="module")
def with_baseline(data, tmp_path_factory):
    """An output folder whose serving directory holds one pushed model (both gates passed)."""
    tmp = tmp_path_factory.mktemp("baseline")
    out = tmp / "out"
    summary, before, after, proc = _run(tmp, data, out, "first", {"min_auc": 0.5, "min_sparsity": 0.0})
    return tmp, out, summary, before, after, proc


def test_both_pass_without_baseline_pushes(with_baseline):
    _, out, summary, before, after, proc = with_baseline
    assert summary["baseline"]["found"] is False
    assert summary["gates"]["blessed"] and _failed(summary) == []
    assert "auc_vs_baseline" not in summary["gates"]["gates"]
    assert summary["push"]["pushed"] and before == {} and len([k for k in after if "/" not in k]) == 1
    # The pruned push on real Criteo rows: parity with the trained model on the eval split, the
    # zero rows gone from the served tables, the warm-start state beside the model.
    push = summary["push"]
    assert summary["ingestion"]["rows_read"] == ROWS
    assert 0 <= push["parity_max_abs_error"] <= 1e-6 and push["warmup_requests"] > 0
    assert push["compacted_tables"] >= 5 and push["embedding_rows_dropped"] > 0
    assert push["embedding_zero_rows"] == summary["training"]["sparsity"]["zero_rows"]
    # Rows of width 8 (32 bytes): the compacted tables lost their zero rows, kept one shared zero row.
    assert push["embedding_bytes_before"] - push["embedding_bytes_after"] == \
        (push["embedding_rows_dropped"] - push["compacted_tables"]) * 32
    assert push["warm_start_bytes"] > 0 and os.path.isdir(os.path.join(push["path"], "warm_start"))
    assert "BLESSED" in proc.stdout


def test_sparsity_fails_alone_with_baseline(data, with_baseline):
    tmp, out, *_ = with_baseline
    summary, before, after, proc = _run(tmp, data, out, "sparse", {"min_auc": 0.5, "max_auc_drop": 1.0,
                                                                    "min_sparsity": 0.999})
    assert summary["baseline"]["found"] is True
    assert _failed(summary) == ["sparsity"]
    assert summary["gates"]["gates"]["auc_vs_baseline"]["passed"]
    assert not summary["push"]["pushed"] and "sparsity" in summary["push"]["reason"]
    assert after == before  # serving directory untouched
    assert "NOT BLESSED" in proc.stdout and "not pushed" in proc.stdout


def test_auc_below_baseline_fails_alone(data, with_baseline):
    # The change threshold against the last pushed model (TFMA's GenericChangeThreshold): the new
    # model must beat the baseline by 0.5 AUC here, which it cannot.
    tmp, out, *_ = with_baseline
    summary, before, after, _ = _run(tmp, data, out, "drop", {"min_auc": 0.5, "max_auc_drop": -0.5,
                                                              "min_sparsity": 0.0})
    assert _failed(summary) == ["auc_vs_baseline"]
    assert summary["gates"]["evaluator_blessed"] is False  # TFMA itself refused
    assert not summary["push"]["pushed"] and after == before


def test_both_fail_without_baseline_pushes_nothing(data, tmp_path):
    out = tmp_path / "out"
    summary, before, after, _ = _run(tmp_path, data, out, "alone", {"min_auc": 0.999, "min_sparsity": 0.999})
    assert summary["baseline"]["found"] is False
    assert _failed(summary) == ["auc", "sparsity"]
    assert not summary["push"]["pushed"] and before == {} and after == {}


def test_both_pass_with_baseline_pushes_a_new_version(data, with_baseline):
    tmp, out, *_ = with_baseline
    summary, before, after, _ = _run(tmp, data, out, "again", {"min_auc": 0.5, "max_auc_drop": 0.05,
                                                               "min_sparsity": 0.0})
    assert summary["baseline"]["found"] is True
    gates = summary["gates"]["gates"]
    # Warm-started from the baseline on the same rows: no worse than it, within the allowed drop.
    assert summary["training"]["warm_start"]["restored"]
    vs = gates["auc_vs_baseline"]
    assert vs["passed"] and vs["value"] >= vs["baseline"] - 0.05
    assert summary["gates"]["blessed"] and summary["push"]["pushed"]
    versions_before = {k for k in before if "/" not in k and k.isdigit()}
    versions_after = {k for k in after if "/" not in k and k.isdigit()}
    assert versions_before < versions_after and len(versions_after - versions_before) == 1
