"""The Trainer's model and optimizer at their defaults on generated data with a planted truth: as
accurate as the data allows, and sparse exactly where the truth is.

Generated span 0 trains, span 1 (same truth, other rows) tests. Transform is the project's
`preprocessing_fn` analysed by TF Transform; model, optimizer and compile are built by the Trainer's
own functions from `pipelines.config.TrainerConfig`'s defaults (XLA off: its equivalence is tested in
tests/optim), with one change: l21 = 1e-2 instead of the default 1e-3.

Why: the generator's noise fields and values carry no signal at all, so on 60k rows the default
l21 keeps too many of their rows and overfits them (test AUC 0.837 after one epoch, 0.815 after
the default four; 18% of the noise rows zero), while l21 = 1e-2 holds 0.836-0.839 over four epochs
with 99% of them zero. On the real Criteo sample the default 1e-3 is the better choice (README,
"Training")."""
import dataclasses
import os

import numpy as np
import pytest

from components.local_transform import analyze, transformed

# Transform and training on 60k generated rows end to end (~2 minutes).
pytestmark = pytest.mark.e2e

TRAIN_ROWS, TEST_ROWS = 60000, 20000


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import tensorflow_transform as tft
    import tf_keras as keras

    import optim
    from components import models
    from components.click_log_example_gen.line_parser import LineParser
    from components.dataset_spec import load_spec
    from components.preprocessing import LABEL_KEY
    from components.training import build_model, make_optimizer
    from components.vocabulary import FieldVocabulary
    from pipelines import generator
    from pipelines.config import TrainerConfig

    root = tmp_path_factory.mktemp("quality")
    spec = load_spec("criteo")
    train_report = generator.generate(str(root / "data"), TRAIN_ROWS, span=0)
    test_report = generator.generate(str(root / "data"), TEST_ROWS, span=1)
    parser = LineParser(spec)

    def rows(path):
        with open(path) as f:
            return [parser.parse(line).example for line in f.read().splitlines()]

    train_rows, test_rows = rows(train_report["path"]), rows(test_report["path"])
    analyze(spec, train_rows, str(root / "transform"))
    tft_output = tft.TFTransformOutput(str(root / "transform"))
    train, test = transformed(tft_output, train_rows), transformed(tft_output, test_rows)
    train_labels, test_labels = train.pop(LABEL_KEY), test.pop(LABEL_KEY)

    cfg = dataclasses.replace(TrainerConfig(), jit_compile=False, l21=1e-2)
    keras.utils.set_random_seed(cfg.seed)
    vocabulary = FieldVocabulary(spec, tft_output)
    model = build_model(cfg, spec, vocabulary)
    model.compile(optimizer=make_optimizer(cfg), loss=keras.losses.BinaryCrossentropy(),
                  metrics=[keras.metrics.AUC(name="auc", num_thresholds=2000)])
    model.fit(train, train_labels, batch_size=cfg.batch_size, epochs=cfg.epochs, shuffle=True, verbose=2)
    auc = model.evaluate(test, test_labels, batch_size=4096, return_dict=True, verbose=0)["auc"]
    truth = generator.GroundTruth.load(train_report["truth_path"])
    return {"auc": auc, "bayes_auc": test_report["bayes_auc"], "vocabulary": vocabulary, "truth": truth,
            "tables": {f: t.numpy() for f, t in models.embedding_tables(model).items()},
            "sparsity": optim.sparsity(models.embedding_tables(model))}


def test_auc_is_within_0_01_of_the_bayes_optimal_auc(trained):
    assert trained["auc"] >= trained["bayes_auc"] - 0.01, (trained["auc"], trained["bayes_auc"])
    assert trained["auc"] <= trained["bayes_auc"] + 0.01  # beating the ceiling would mean a leak


def test_noise_fields_are_pruned_and_signal_rows_kept(trained):
    from pipelines.generator import CAT_COLUMNS
    truth, vocabulary, tables = trained["truth"], trained["vocabulary"], trained["tables"]
    signal_fields = set(truth.cat_weights)
    zero = {f: ~tables[f].any(axis=1) for f in tables}
    noise_rows = sum(len(zero[f]) for f in CAT_COLUMNS if f not in signal_fields)
    noise_zero = sum(int(zero[f].sum()) for f in CAT_COLUMNS if f not in signal_fields)
    assert noise_zero >= 0.8 * noise_rows, f"{noise_zero} of {noise_rows} noise-field rows are zero"

    kept = total = 0
    for field, values in truth.signal_values().items():
        row_of = {v: i for i, v in enumerate(vocabulary.values[field])}
        rows = [row_of[v.encode()] for v in values if v.encode() in row_of]  # under the threshold: no row
        total += len(rows)
        kept += int((~zero[field][rows]).sum())
    assert total >= 100, total
    assert kept >= 0.9 * total, f"{kept} of {total} rows carrying signal are kept"
