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


def test_bounded_ints_in_pieces_equal_one_numpy_call():
    # The I2 negatives come from one Generator.integers(1, 4) call in the single-generator order;
    # drawn in pieces they must be the same values and leave the generator in the same state.
    for sizes in ([0], [1], [2], [3], [1, 1, 1], [5, 0, 8, 3], [999, 1000, 1]):
        reference = np.random.default_rng(11)
        expected = reference.integers(1, 4, size=sum(sizes))
        rng = np.random.default_rng(11)
        pieces = generator._BoundedInts(rng, 1, 4)
        got = np.concatenate([pieces(n) for n in sizes])
        np.testing.assert_array_equal(got, expected)
        assert rng.random() == reference.random(), sizes


def _all_at_once(rows, span, cfg=generator.GeneratorConfig()):
    """The rows as the generator drew them before it streamed: every column whole, from one generator."""
    truth = generator.make_truth(cfg)
    rng = np.random.default_rng([cfg.seed, 2, span])
    sample = generator._sample(cfg, generator._OneGenerator(rng), rows)
    labels = (rng.random(rows) < generator._sigmoid(generator._logits(truth, sample))).astype(np.int64)
    vocabs = [[generator.value_string(f, i, cfg.seed) for i in range(cfg.vocab_sizes[j])] + [""]
              for j, f in enumerate(generator.CAT_COLUMNS)]
    return generator._tsv_lines(sample, labels, vocabs)


def test_streamed_rows_do_not_depend_on_the_chunk_size(tmp_path):
    a = generator.generate(str(tmp_path / "a" / "data"), 3001, span=1)
    b = generator.generate(str(tmp_path / "b" / "data"), 3001, span=1, chunk_rows=37)
    assert filecmp.cmp(a["path"], b["path"], shallow=False)
    assert abs(a["bayes_auc"] - b["bayes_auc"]) < 1e-12 and a["ctr"] == b["ctr"]
    with open(a["path"]) as f:
        assert f.read() == _all_at_once(3001, span=1)


def test_memory_does_not_grow_with_rows(tmp_path):
    import tracemalloc

    def peak(rows):
        tracemalloc.start()
        try:
            generator.generate(str(tmp_path / str(rows) / "data"), rows, chunk_rows=2000)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(4000), peak(40000)
    # All at once, 40,000 rows took ~230 MB (a table of every field as numpy strings).
    assert large < 1.2 * small and large < 24 << 20, (small, large)


def test_streamed_bayes_metrics_match_the_exact_ones():
    rng = np.random.default_rng(3)
    p = 1 / (1 + np.exp(-rng.normal(-1.2, 1.3, size=30000)))
    p[:500] = p[500:1000]  # ties
    metrics = generator.BayesMetrics()
    for part in np.array_split(p, 7):
        metrics.add(part)
    assert abs(metrics.auc() - generator.expected_auc(p)) < 1e-8
    eps = 1e-12
    exact = -np.mean(p * np.log(p + eps) + (1 - p) * np.log(1 - p + eps))
    assert abs(metrics.logloss() - exact) < 1e-12


def test_one_row_set(tmp_path):
    report = generator.generate(str(tmp_path / "data"), 1)
    assert report["rows"] == 1 and np.isnan(report["bayes_auc"])  # no pairs to rank
    assert len(list(_read_rows(report["path"]))) == 1


def test_rejects_a_set_larger_than_the_free_disk_before_drawing_it(tmp_path):
    with pytest.raises(ValueError, match="GB free") as e:
        generator.generate(str(tmp_path / "data"), 10**12)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "data").exists()
