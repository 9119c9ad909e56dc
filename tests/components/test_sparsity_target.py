"""Sparsity and size targets in the Trainer (components.sparsity_target): the config's targets, the
callback on a small model, warm start carrying l21 (and starting from an older state without it),
KeepBestEpoch keeping only epochs on target, and one run through TFX's Trainer executor."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import optim
from components import sparsity_target as st
from components import warm_start
from optim.sparsity_control import Target
from tests.components.test_trainer_module import _train, inputs  # noqa: F401 (a fixture)
from tests.components.test_warm_start import OLD, _batches, _model, _train as _fit, _vocabulary


def test_targets_of_a_config():
    assert st.targets({}) == {}
    groups = st.targets({"target_sparsity": 0.8, "max_embedding_bytes_per_table": {"C3": 4096},
                         "target_sparsity_per_table": {"C1": 0.9}})
    assert groups == {st.GLOBAL: Target(sparsity=0.8), "C1": Target(sparsity=0.9), "C3": Target(max_bytes=4096)}
    with pytest.raises(ValueError, match="both"):
        st.targets({"target_sparsity": 0.8, "max_embedding_bytes": 10})
    with pytest.raises(ValueError, match="C1"):
        st.targets({"target_sparsity_per_table": {"C1": 0.9}, "max_embedding_bytes_per_table": {"C1": 10}})


def _table_model(rows=400, dim=4, seed=0):
    """One embedding table of `rows` ids whose first tenth carry the label."""
    keras.utils.set_random_seed(seed)
    ids = keras.Input(shape=(), dtype=tf.int64, name="C1")
    table = keras.layers.Embedding(rows, dim, name="embedding_C1")
    logit = keras.layers.Dense(1)(table(ids))
    model = keras.Model(ids, tf.sigmoid(logit[:, 0]))
    rng = np.random.default_rng(seed)
    x = rng.integers(0, rows, 8192)
    y = ((x < rows // 10) & (rng.random(8192) < 0.9) | (rng.random(8192) < 0.1)).astype("float32")
    return model, x, y


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager", "xla"])
def test_callback_reaches_a_target_sparsity_and_reports_it(tmp_path, jit_compile):
    model, x, y = _table_model()
    model.compile(optimizer=optim.GroupAdam(0.02, l21=1e-3), loss="binary_crossentropy", jit_compile=jit_compile)
    callback = st.SparsityTarget({st.GLOBAL: Target(sparsity=0.7)}, log_dir=str(tmp_path))
    model.fit(x, y, batch_size=128, epochs=3, verbose=0, callbacks=[callback])
    report = callback.report()
    group = report["groups"][st.GLOBAL]
    assert abs(optim.sparsity(model)["fraction"] - 0.7) <= 0.02
    assert group["on_target"] and abs(group["reached_sparsity"] - 0.7) <= 0.02
    assert group["l21"] != 1e-3 and group["l21_start"] == 1e-3 and group["l21"] >= 0
    assert group["l21"] == float(model.optimizer.l21_variable(model.layers[1].embeddings).numpy())
    assert len(group["trajectory"]) > 10 and all(p["l21"] >= 0 for p in group["trajectory"])
    assert callback.on_target()
    events = tf.io.gfile.glob(os.path.join(str(tmp_path), "sparsity_target", "events.*"))
    assert events
    tags = {v.tag for e in tf.compat.v1.train.summary_iterator(events[0]) for v in e.summary.value}
    assert {"l21/all", "reached_sparsity/all", "reached_bytes/all", "target/all"} <= tags


def test_callback_meets_a_byte_budget():
    model, x, y = _table_model(rows=1000)
    model.compile(optimizer=optim.GroupAdam(0.02, l21=1e-3), loss="binary_crossentropy")
    budget = 250 * 4 * 4  # 250 of the 1000 rows of width 4
    callback = st.SparsityTarget({st.GLOBAL: Target(max_bytes=budget)})
    model.fit(x, y, batch_size=128, epochs=4, verbose=0, callbacks=[callback])
    kept = st.weight_bytes(model)["embedding_bytes"]
    assert abs(kept / budget - 1) <= 0.02
    assert callback.report()["groups"][st.GLOBAL]["reached_bytes"] == kept


def test_unknown_table_or_plain_adam_is_one_clear_error():
    model, x, y = _table_model()
    model.compile(optimizer=optim.GroupAdam(0.02), loss="binary_crossentropy")
    with pytest.raises(ValueError, match="per-table target for C9: no such embedding table"):
        model.fit(x, y, batch_size=128, epochs=1, verbose=0, callbacks=[st.SparsityTarget({"C9": Target(0.5)})])
    model, x, y = _table_model()
    model.compile(optimizer=keras.optimizers.Adam(), loss="binary_crossentropy")
    with pytest.raises(ValueError, match="needs a Group optimizer"):
        model.fit(x, y, batch_size=128, epochs=1, verbose=0,
                  callbacks=[st.SparsityTarget({st.GLOBAL: Target(0.5)})])


def test_weight_bytes_counts_non_zero_rows_and_the_other_weights():
    model, _, _ = _table_model(rows=10, dim=4)
    table = model.layers[1].embeddings
    value = table.numpy()
    value[:6] = 0
    table.assign(value)
    out = st.weight_bytes(model)
    assert out["embedding_bytes"] == 4 * 4 * 4 and out["embedding_bytes_per_table"] == {"C1": 64}
    assert out["dense_bytes"] == (4 + 1) * 4 and out["model_bytes"] == 64 + 20


# --- warm start ---------------------------------------------------------------------------------------


def _trained_state(tmp_path, l21_value, drop_l21=False):
    keras.utils.set_random_seed(1)
    vocab = _vocabulary(tmp_path / "v.txt", OLD)
    model = _model(vocab)
    optimizer = optim.GroupAdam(learning_rate=0.05, l21=1e-4)
    _fit(model, optimizer, _batches(len(OLD), 5))
    for variable in optimizer._l21_variables:
        variable.assign(l21_value)
    state = str(tmp_path / "state")
    if drop_l21:  # as a version without l21 variables saved it
        pairs = warm_start._state_variables
        warm_start._state_variables = lambda *a, **k: [(n, v) for n, v in pairs(*a, **k) if not n.startswith("l21/")]
        try:
            warm_start.save(state, model, optimizer, vocab.path, {"model": "dnn", "optimizer": "group_adam"})
        finally:
            warm_start._state_variables = pairs
    else:
        warm_start.save(state, model, optimizer, vocab.path, {"model": "dnn", "optimizer": "group_adam"})
    return state, vocab


def _restored(state, vocab, l21=1e-4):
    model = _model(vocab)
    optimizer = optim.GroupAdam(learning_rate=0.05, l21=l21)
    model.compile(optimizer=optimizer, loss="binary_crossentropy")
    report = warm_start.restore(state, model, optimizer, vocab, "dnn", "group_adam")
    return model, optimizer, report


def test_warm_start_carries_each_tables_l21(tmp_path):
    state, vocab = _trained_state(tmp_path, 0.0123)
    reader = tf.train.load_checkpoint(os.path.join(state, warm_start.STATE_PREFIX))
    assert {"l21/embedding_C1/embeddings", "l21/embedding_C2/embeddings"} <= set(reader.get_variable_to_shape_map())
    model, optimizer, report = _restored(state, vocab)
    assert report["restored"] and report["optimizer_state"]
    assert [float(v.numpy()) for v in optimizer._l21_variables] == [0.0123, 0.0123]


def test_warm_start_from_a_state_without_l21_keeps_the_configs(tmp_path):
    state, vocab = _trained_state(tmp_path, 0.0123, drop_l21=True)
    reader = tf.train.load_checkpoint(os.path.join(state, warm_start.STATE_PREFIX))
    assert not any(n.startswith("l21/") for n in reader.get_variable_to_shape_map())
    model, optimizer, report = _restored(state, vocab, l21=3e-4)
    assert report["restored"] and report["optimizer_state"] and report["rows_carried"] > 0
    assert [float(v.numpy()) for v in optimizer._l21_variables] == [3e-4, 3e-4]


def test_without_a_target_the_trainer_trains_at_the_configs_l21_after_a_warm_start(tmp_path):
    from components.trainer_config import TrainerConfig
    from components.trainer_module import KeepBestEpoch, _sparsity_target
    state, vocab = _trained_state(tmp_path, 0.0123)
    model, optimizer, _ = _restored(state, vocab)
    callbacks = []
    assert _sparsity_target(TrainerConfig(l21=2e-3), model, str(tmp_path), callbacks, None) is None
    assert callbacks == [] and [float(v.numpy()) for v in optimizer._l21_variables] == [2e-3, 2e-3]
    # with a target the carried l21 stays (the controller starts there), and KeepBestEpoch follows it
    model, optimizer, _ = _restored(state, vocab)
    keep = KeepBestEpoch(str(tmp_path))
    target = _sparsity_target(TrainerConfig(l21=2e-3, target_sparsity=0.5), model, str(tmp_path), callbacks, keep)
    assert callbacks == [target] and keep.eligible == target.on_target
    assert [float(v.numpy()) for v in optimizer._l21_variables] == [0.0123, 0.0123]
    # a cold start opens the kept rows' budget while training; carried duals get it whole at once
    assert target.settings.release > 0
    model, optimizer, _ = _restored(state, vocab)
    warm = _sparsity_target(TrainerConfig(target_sparsity=0.5), model, str(tmp_path), [], None, warm_duals=True)
    assert warm.settings.release == 0.0


def test_keep_best_epoch_keeps_only_epochs_on_target(tmp_path):
    from components.trainer_module import KeepBestEpoch
    on = {"value": False}
    keep = KeepBestEpoch(str(tmp_path), patience=1, eligible=lambda: on["value"])
    keep.model = type("M", (), {"stop_training": False, "optimizer": None})()
    snapshots = []
    keep_snapshot = lambda *a: snapshots.append(a)  # noqa: E731
    import components.trainer_module as tm
    original, tm.warm_start.snapshot = tm.warm_start.snapshot, keep_snapshot
    try:
        keep.on_epoch_end(0, {"val_auc": 0.9})  # best AUC, but off target: no candidate
        assert keep.best_epoch is None and not keep.model.stop_training
        on["value"] = True
        keep.on_epoch_end(1, {"val_auc": 0.8})
        assert keep.best_epoch == 1 and len(snapshots) == 1
        on["value"] = False
        keep.on_epoch_end(2, {"val_auc": 0.7})  # off target: does not count toward the patience
        assert not keep.model.stop_training
        on["value"] = True
        keep.on_epoch_end(3, {"val_auc": 0.75})
        assert keep.model.stop_training
    finally:
        tm.warm_start.snapshot = original
    report = keep.report(3, True)
    assert report["best_epoch"] == 2 and report["epochs_off_target"] == [1, 3]


# --- through TFX's Trainer executor ----------------------------------------------------------------------


def test_trainer_reaches_the_target_and_reports_it(inputs, tmp_path):  # noqa: F811
    uri = _train(inputs, tmp_path, {"target_sparsity": 0.7, "epochs": 3, "batch_size": 64})
    with open(os.path.join(uri, "training.json")) as f:
        training = json.load(f)
    with open(os.path.join(uri, "sparsity.json")) as f:
        sparsity = json.load(f)
    group = training["sparsity_target"]["groups"][st.GLOBAL]
    assert group["target_sparsity"] == 0.7 and group["on_target"]
    assert abs(sparsity["fraction"] - 0.7) <= 0.02 and group["reached_sparsity"] == round(sparsity["fraction"], 6)
    assert group["reached_bytes"] == sparsity["embedding_bytes"] and sparsity["model_bytes"] > sparsity["embedding_bytes"]
    assert group["l21_start"] == 1e-3 and group["trajectory"][-1]["l21"] > 0
    assert "epochs_off_target" in training["early_stopping"]
    events = tf.io.gfile.glob(os.path.join(str(tmp_path), "model_run", "sparsity_target", "events.*"))
    assert events


def test_summary_and_report_show_the_target_and_the_size_gate():
    from pipelines import report, summary
    run = {"status": "succeeded", "training": {
        "model": "dnn", "optimizer": "group_adam", "steps": 252,
        "sparsity": {"fraction": 0.951, "zero_rows": 2906, "rows": 3056, "tables": {}},
        "sparsity_target": {"groups": {"*": {"target_sparsity": 0.95, "max_embedding_bytes": None,
                                             "reached_sparsity": 0.951, "reached_bytes": 4800,
                                             "l21_start": 1e-3, "l21": 0.0192}}}},
        "gates": {"gates": {"model_bytes": {"value": 120000, "threshold": 100000, "comparison": "<=",
                                            "passed": False}},
                  "blessed": False, "reason": "model_bytes 120000 > 100000"}}
    text = summary.render(run)
    assert "  target (all tables): sparsity 0.95 -> reached 95.1%, 0.005 MB of non-zero rows; l21 0.001 -> 0.0192" in text
    assert "model_bytes 120000 > 100000 FAIL -> NOT BLESSED" in text
    assert "&gt; 100,000" in report._gates_section(run)


@pytest.mark.parametrize("mirrored", [False, True])
def test_variables_are_read_and_assigned_in_one_call_or_one_by_one_under_a_strategy(mirrored):
    """Plain variables go through one function call; a strategy's variables (here mirrored, on this
    process's CPU) one by one; the values are the variables' either way."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"]) if mirrored else tf.distribute.get_strategy()
    with strategy.scope():
        tables = [tf.Variable(np.random.default_rng(i).normal(size=(5, 3)).astype(np.float32)) for i in range(3)]
        l21 = [tf.Variable(1e-3, dtype=tf.float64) for _ in range(3)]
    read, assign = st._Variables(tables), st._Variables(l21)
    assert read._one_call is (not mirrored) and assign._one_call is (not mirrored)
    for got, table in zip(read.values(), tables):
        np.testing.assert_array_equal(got, table.numpy())
    tables[1].assign(tf.zeros((5, 3)))
    np.testing.assert_array_equal(read.values()[1], np.zeros((5, 3), np.float32))
    assign.assign(0.0123)
    assert [v.numpy() for v in l21] == [0.0123] * 3


def test_control_points_are_counted_in_steps_when_a_call_runs_several():
    # With several steps per call into TensorFlow Keras reports each call's last batch: control
    # comes at the first call past each multiple of the interval, which also caps the steps per call.
    callback = st.SparsityTarget({st.GLOBAL: Target(sparsity=0.5)}, interval=3)
    controls = []
    callback.control = lambda: controls.append(callback.steps)
    callback.set_params({"epochs": 2, "steps": 5})
    callback.on_train_begin()
    assert callback.max_steps_per_execution() == 3
    callback.on_epoch_begin(0)
    for batch in (1, 3, 4):  # calls of 2, 2 and 1 steps
        callback.on_train_batch_end(batch)
    callback.on_epoch_end(0)
    callback.on_epoch_begin(1)
    for batch in (2, 4):
        callback.on_train_batch_end(batch)
    assert controls == [4, 8, 10]
    assert callback.steps == 10
