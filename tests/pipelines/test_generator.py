import filecmp
import json
import os

import numpy as np
import pytest

from pipelines import generator


def _rank_auc(scores, labels):
    """Mann-Whitney AUC with average ranks for ties (independent of generator.expected_auc)."""
    from scipy.stats import rankdata
    ranks = rankdata(scores)
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _read_rows(path):
    with open(path) as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            assert len(fields) == 40
            ints = {c: (int(v) if v else None) for c, v in zip(generator.INT_COLUMNS, fields[1:14])}
            cats = {c: (v or None) for c, v in zip(generator.CAT_COLUMNS, fields[14:])}
            yield int(fields[0]), ints, cats


def test_truth_reproduces_reported_bayes_auc(tmp_path):
    # The truth file, applied to the rows of the file by an independent path, must give the AUC the
    # generator reports (within the sampling noise of the labels: sd ~0.002 at 150k rows).
    report = generator.generate(str(tmp_path / "data"), 150_000)
    truth = generator.GroundTruth.load(report["truth_path"])
    labels, logits = [], []
    for label, ints, cats in _read_rows(report["path"]):
        labels.append(label)
        logits.append(truth.logit(ints, cats))
    labels, logits = np.array(labels), np.array(logits)
    assert len(labels) == 150_000
    empirical = _rank_auc(logits, labels)
    assert abs(empirical - report["bayes_auc"]) < 0.01, (empirical, report["bayes_auc"])
    assert 0.7 < report["bayes_auc"] < 0.95
    assert abs(labels.mean() - 0.25) < 0.02
    # The planted model is calibrated: mean predicted probability matches the click rate.
    assert abs((1 / (1 + np.exp(-logits))).mean() - labels.mean()) < 0.01


def test_expected_auc_matches_monte_carlo():
    rng = np.random.default_rng(0)
    p = rng.beta(1, 3, size=4000)
    draws = [_rank_auc(p, (rng.random(p.size) < p).astype(int)) for _ in range(200)]
    assert abs(np.mean(draws) - generator.expected_auc(p)) < 0.003


def test_deterministic_by_seed_and_span(tmp_path):
    a = generator.generate(str(tmp_path / "a" / "data"), 2000, span=1)
    b = generator.generate(str(tmp_path / "b" / "data"), 2000, span=1)
    c = generator.generate(str(tmp_path / "c" / "data"), 2000, span=2)
    assert filecmp.cmp(a["path"], b["path"], shallow=False)
    assert not filecmp.cmp(a["path"], c["path"], shallow=False)
    ta, tc = (json.load(open(r["truth_path"])) for r in (a, c))
    assert ta["cat_weights"] == tc["cat_weights"] and ta["bias"] == tc["bias"]


def test_layout_missing_values_and_noise_fields(tmp_path):
    report = generator.generate(str(tmp_path / "data"), 5000)
    rows = list(_read_rows(report["path"]))
    missing_c20 = np.mean([r[2]["C20"] is None for r in rows])
    assert 0.35 < missing_c20 < 0.55  # Criteo-like missing rate
    assert any(r[1]["I2"] is not None and r[1]["I2"] < 0 for r in rows)  # I2 has negatives
    truth = generator.GroundTruth.load(report["truth_path"])
    signal = truth.signal_values()
    assert set(signal) == set(generator.GeneratorConfig().signal_cat_fields)
    assert all(len(v) > 0 for v in signal.values())
    for value in {r[2]["C3"] for r in rows} - {None}:
        assert len(value) == 8 and int(value, 16) >= 0  # hashed-looking tokens


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="rows"):
        generator.generate(str(tmp_path), 0)
    with pytest.raises(ValueError, match="vocab_sizes"):
        generator.generate(str(tmp_path), 10, generator.GeneratorConfig(vocab_sizes=(5, 5)))
