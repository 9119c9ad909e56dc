"""benchmarks/sparsity_target.py: the committed results cover every dataset and target the README
quotes, and their verdicts follow from the raw runs."""
import json
import os

import pytest

from benchmarks import sparsity_target as st

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "sparsity_target")


@pytest.fixture(scope="module")
def results():
    with open(RESULTS + ".json") as f:
        return json.load(f)["results"]


def test_every_dataset_target_and_byte_budget_was_run(results):
    assert [r["dataset"] for r in results] == st.DEFAULT_DATASETS.split(",")
    for res in results:
        rows = st.summarize(res, st.TARGETS)
        assert [row["target"] for row in rows] == list(st.TARGETS) + ["bytes"], res["dataset"]
        assert all(row["seeds"] == st.PLANS[res["dataset"]].seeds for row in rows)
        assert all(row["fixed_auc"] is not None for row in rows)


def test_verdicts_follow_from_the_runs(results):
    for res in results:
        for row in st.summarize(res, st.TARGETS):
            if row["target"] == "bytes":
                assert row["reached_ok"] == all(abs(k / res["budget_bytes"] - 1) <= st.BYTES_TOLERANCE
                                                for k in row["kept_bytes"])
            else:
                assert row["reached_ok"] == all(abs(s - row["target"]) <= st.SPARSITY_TOLERANCE
                                                for s in row["reached_by_seed"])
            assert row["auc_ok"] == (row["auc"] >= row["fixed_auc"] - st.AUC_MARGIN)
            # The controller never drove l21 negative.
            assert all(l >= 0 for l in row["l21"])


def test_committed_text_is_the_rendering_of_the_json(results):
    with open(RESULTS + ".txt") as f:
        text = f.read()
    rendered = st.render(results, st.TARGETS, "x", 0.0)
    table = [line for line in rendered.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 4 * len(results)  # header + a row per target and budget
    for line in table:
        assert line in text


def test_readme_quotes_the_committed_figures(results):
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert "### Choosing the sparsity" in readme and "Choosing `l21`" not in readme
    for res in results:
        for row in st.summarize(res, st.TARGETS):
            cell = f"{row['auc']:.4f} ({row['fixed_auc']:.4f})"
            assert cell in readme, (res["dataset"], row["target"])
            if row["target"] != "bytes":
                assert f"{row['reached']:.3f}, {cell}" in readme
