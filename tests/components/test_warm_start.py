"""Warm start (components.warm_start): rows carried by (field, value), slots with them, and a
restored run that continues exactly like an uninterrupted one."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import optim
from components import models, warm_start
from components.dataset_spec import DatasetSpec
from components.vocabulary import FieldVocabulary

SEP = "\x1f"


def _spec(oov=1):
    return DatasetSpec.from_dict({
        "name": "tiny", "delimiter": "\t", "frequency_threshold": 1, "num_oov_buckets": oov,
        "columns": [{"name": "label", "kind": "label"}, {"name": "I1", "kind": "int"},
                    {"name": "C1", "kind": "categorical"}, {"name": "C2", "kind": "categorical"}]})


def _vocabulary(path, tokens, spec=None):
    with open(path, "wb") as f:
        f.write(b"".join(t.encode() + b"\n" for t in tokens))
    return FieldVocabulary(spec or _spec(), vocabulary_path=str(path))


def _model(vocabulary, kind="dnn", hidden=(8,)):
    return models.build_model(kind, ["I1"], vocabulary.embedded_fields, vocabulary.table_rows(),
                              embedding_dim=4, hidden_units=hidden, global_to_row=vocabulary.global_to_row,
                              oov_rows={f: vocabulary.oov_row(f) for f in vocabulary.fields})


def _batches(n_ids, steps, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        ids = rng.integers(-1, n_ids, size=[32, 2])
        features = {"I1": rng.normal(size=[32]).astype(np.float32), "C1": ids[:, 0], "C2": ids[:, 1]}
        out.append((features, (ids[:, 0] % 2).astype(np.float32)))
    return out


def _train(model, optimizer, batches):
    if not model.optimizer:
        model.compile(optimizer=optimizer, loss="binary_crossentropy")
    for features, labels in batches:
        model.train_on_batch(features, labels)


def _table(model, field):
    return models.embedding_tables(model)[field].numpy()


def _slot(optimizer, slot, field):
    """A slot of a field's table: its own variable, or a part of a Group optimizer's row_state."""
    state = [v for v in optimizer.variables() if f"row_state/embedding_{field}/" in v.name]
    if state:
        return optimizer.split_row_state(state[0].numpy(), state[0].shape.rank - 1)[slot]
    return [v for v in optimizer.variables() if f"{slot}/embedding_{field}/" in v.name][0].numpy()


OLD = [f"C1{SEP}a", f"C2{SEP}x", f"C1{SEP}b", f"C1{SEP}c", f"C2{SEP}y"]
# b vanished, d is new, c and a swapped places; C2 unchanged.
NEW = [f"C1{SEP}c", f"C2{SEP}y", f"C1{SEP}d", f"C2{SEP}x", f"C1{SEP}a"]


@pytest.fixture()
def saved(tmp_path):
    keras.utils.set_random_seed(1)
    old_vocab = _vocabulary(tmp_path / "old.txt", OLD)
    model = _model(old_vocab)
    optimizer = optim.GroupAdam(learning_rate=0.05, l21=1e-4)
    _train(model, optimizer, _batches(len(OLD), 20))
    state = str(tmp_path / "state")
    warm_start.save(state, model, optimizer, old_vocab.path, {"model": "dnn", "optimizer": "group_adam"})
    return state, model, optimizer


def test_rows_and_their_slots_follow_their_values(saved, tmp_path):
    state, old_model, old_opt = saved
    keras.utils.set_random_seed(2)
    new_vocab = _vocabulary(tmp_path / "new.txt", NEW)
    model = _model(new_vocab)
    optimizer = optim.GroupAdam(learning_rate=0.05, l21=1e-4)
    model.compile(optimizer=optimizer, loss="binary_crossentropy")
    fresh = _table(model, "C1").copy()

    report = warm_start.restore(state, model, optimizer, new_vocab, "dnn", "group_adam")
    assert report["restored"] and report["optimizer_state"], report
    # Old C1 rows: a=0, b=1, c=2, OOV=3. New C1 rows: c=0, d=1, a=2, OOV=3.
    assert report["fields"]["C1"] == {"carried": 2, "new": 1, "dropped": 1}
    assert report["fields"]["C2"] == {"carried": 2, "new": 0, "dropped": 0}
    assert report["steps_before"] == 20 and int(optimizer.iterations.numpy()) == 20
    for name, slot_of in (("w", None), ("m", "m"), ("v", "v"), ("z", "z")):
        before = _table(old_model, "C1") if slot_of is None else _slot(old_opt, slot_of, "C1")
        after = _table(model, "C1") if slot_of is None else _slot(optimizer, slot_of, "C1")
        np.testing.assert_array_equal(after[0], before[2], err_msg=f"{name}: 'c' keeps its row")
        np.testing.assert_array_equal(after[2], before[0], err_msg=f"{name}: 'a' keeps its row")
        np.testing.assert_array_equal(after[3], before[3], err_msg=f"{name}: the OOV row")
        if slot_of is None:
            np.testing.assert_array_equal(after[1], fresh[1], err_msg="'d' starts from the initializer")
        else:
            assert not after[1].any(), f"{name}: 'd' starts with zero optimizer state"
    # C2's values swapped ids too: x was row 0, y row 1; now y row 0, x row 1.
    np.testing.assert_array_equal(_table(model, "C2")[[1, 0]], _table(old_model, "C2")[:2])
    # Dense weights are copied as they were.
    np.testing.assert_array_equal(model.get_layer("logit").kernel.numpy(), old_model.get_layer("logit").kernel.numpy())
    # The id map (global id -> row) is the new vocabulary's, not the restored one's.
    np.testing.assert_array_equal(model.get_layer("field_rows").global_to_row.numpy(), new_vocab.global_to_row)


def test_restored_training_continues_exactly_like_an_uninterrupted_run(tmp_path):
    vocab = _vocabulary(tmp_path / "v.txt", OLD)
    batches = _batches(len(OLD), 30)

    keras.utils.set_random_seed(3)
    straight = _model(vocab)
    _train(straight, optim.GroupAdam(learning_rate=0.05, l21=1e-3), batches)

    keras.utils.set_random_seed(3)
    first = _model(vocab)
    first_opt = optim.GroupAdam(learning_rate=0.05, l21=1e-3)
    _train(first, first_opt, batches[:12])
    state = str(tmp_path / "state")
    warm_start.save(state, first, first_opt, vocab.path, {"model": "dnn", "optimizer": "group_adam"})

    keras.utils.set_random_seed(99)  # a different initialization: everything must come from the state
    second = _model(vocab)
    second_opt = optim.GroupAdam(learning_rate=0.05, l21=1e-3)
    second.compile(optimizer=second_opt, loss="binary_crossentropy")
    assert warm_start.restore(state, second, second_opt, vocab, "dnn", "group_adam")["restored"]
    _train(second, second_opt, batches[12:])
    for a, b in zip(straight.trainable_weights, second.trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.name)
    assert optim.sparsity(models.embedding_tables(second))["zero_rows"] == \
        optim.sparsity(models.embedding_tables(straight))["zero_rows"]


def test_another_optimizer_takes_the_weights_but_not_the_optimizer_state(saved, tmp_path):
    state, old_model, _ = saved
    vocab = _vocabulary(tmp_path / "same.txt", OLD)
    model = _model(vocab)
    optimizer = keras.optimizers.Adam()
    model.compile(optimizer=optimizer, loss="binary_crossentropy")
    report = warm_start.restore(state, model, optimizer, vocab, "dnn", "adam")
    assert report["restored"] and not report["optimizer_state"]
    assert int(optimizer.iterations.numpy()) == 0
    np.testing.assert_array_equal(_table(model, "C1"), _table(old_model, "C1"))


@pytest.mark.parametrize("kind, hidden, reason", [("deepfm", (8,), "deepfm"), ("dnn", (16,), "deep_dense_0")])
def test_an_incompatible_model_starts_cold_and_nothing_is_assigned(saved, tmp_path, kind, hidden, reason):
    state, old_model, _ = saved
    vocab = _vocabulary(tmp_path / "same.txt", OLD)
    model = _model(vocab, kind=kind, hidden=hidden)
    optimizer = optim.GroupAdam(learning_rate=0.05)
    model.compile(optimizer=optimizer, loss="binary_crossentropy")
    before = [w.numpy().copy() for w in model.trainable_weights]
    report = warm_start.restore(state, model, optimizer, vocab, kind, "group_adam")
    assert not report["restored"] and reason in report["reason"], report
    for w, b in zip(model.trainable_weights, before):
        np.testing.assert_array_equal(w.numpy(), b)


def test_no_state_is_a_cold_start(tmp_path):
    vocab = _vocabulary(tmp_path / "v.txt", OLD)
    model = _model(vocab)
    report = warm_start.restore(str(tmp_path / "nothing"), model, keras.optimizers.Adam(), vocab, "dnn", "adam")
    assert report == {"restored": False, "source": str(tmp_path / "nothing"),
                      "reason": f"no warm-start state in {tmp_path / 'nothing'}"}


def test_more_oov_rows_carry_the_common_ones(saved, tmp_path):
    state, old_model, _ = saved
    vocab = _vocabulary(tmp_path / "oov.txt", OLD, spec=_spec(oov=3))
    model = _model(vocab)
    optimizer = optim.GroupAdam(learning_rate=0.05)
    model.compile(optimizer=optimizer, loss="binary_crossentropy")
    assert warm_start.restore(state, model, optimizer, vocab, "dnn", "group_adam")["restored"]
    np.testing.assert_array_equal(_table(model, "C1")[:4], _table(old_model, "C1"))
    assert tf.reduce_any(_table(model, "C1")[4:] != 0)  # the two extra OOV rows: initializer values
