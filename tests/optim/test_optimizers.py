"""The Group optimizers: zero lambdas == tf_keras, lambdas == the NumPy transcription of the notes,
lazy rows, duplicate ids, pruning, argument checks, variable selection, config, XLA."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import optim
from tests.optim import numpy_reference as ref

ROWS, DIM = 12, 4

# (Group optimizer, the tf_keras optimizer it must equal with zero lambdas)
PAIRS = {
    "adam": (
        lambda **kw: optim.GroupAdam(0.05, **kw),
        lambda: tf_keras.optimizers.Adam(0.05),
    ),
    "amsgrad": (
        lambda **kw: optim.GroupAMSGrad(0.05, **kw),
        lambda: tf_keras.optimizers.Adam(0.05, amsgrad=True),
    ),
    "adagrad": (
        lambda **kw: optim.GroupAdagrad(0.1, initial_accumulator_value=0.1, **kw),
        lambda: tf_keras.optimizers.Adagrad(0.1, initial_accumulator_value=0.1),
    ),
    "momentum": (
        lambda **kw: optim.GroupMomentum(0.05, momentum=0.9, **kw),
        lambda: tf_keras.optimizers.SGD(0.05, momentum=0.9),
    ),
}


def _initial_table(seed=0, rows=ROWS, dim=DIM):
    return np.random.RandomState(seed).randn(rows, dim).astype(np.float32) * 0.1


def _dense_gradients(steps, seed=1, rows=ROWS, dim=DIM):
    rng = np.random.RandomState(seed)
    return [rng.randn(rows, dim).astype(np.float32) for _ in range(steps)]


def _sparse_gradients(steps, seed=2, rows=ROWS, dim=DIM, batch=9, late_rows=()):
    """Random ids with duplicates; rows in late_rows first appear at step steps // 2."""
    rng = np.random.RandomState(seed)
    early = [r for r in range(rows) if r not in late_rows]
    out = []
    for t in range(steps):
        pool = early if t < steps // 2 else list(range(rows))
        ids = rng.choice(pool, batch).astype(np.int64)
        ids[-1] = ids[0]  # always at least one duplicate
        out.append((ids, rng.randn(batch, dim).astype(np.float32)))
    return out


def _slices(ids, values, rows=ROWS, dim=DIM):
    return tf.IndexedSlices(
        tf.constant(values), tf.constant(ids), tf.constant([rows, dim], tf.int64)
    )


def _run(optimizer, table, gradients):
    var = tf.Variable(table, name="embeddings")
    for g in gradients:
        grad = _slices(*g) if isinstance(g, tuple) else tf.constant(g)
        optimizer.apply_gradients([(grad, var)])
    return var


def _slot(optimizer, var, name):
    """The value of `var`'s slot `name` (a moment, or the dual z of a regularized variable)."""
    if optimizer.is_regularized(var):
        return optimizer.split_row_state(optimizer.row_state(var), var.shape.rank)[name]
    return optimizer._slot_variables[name][optimizer._index_dict[optimizer._var_key(var)]]


# --- zero lambdas: exactly the vanilla optimizer ----------------------------------------------------

# Issue #3: with zero lambdas and every row in every batch, each Group optimizer's trajectory equals the
# tf_keras one within 1e-6 over 100 steps. The weights after every step are compared, not only the last.
# float64 variables: in float32 the two telescoping forms of the same update (w -= inc/D vs. z += ...,
# w = -z/D) differ by round-off alone, which over 100 steps at weights of magnitude ~1 (float32 ulp
# 1.2e-7) reached 1.07e-6 (measured, sparse Group AMSGrad); in float64 they agree to 1e-9 (Adagrad) and
# 1e-13 (Adam, AMSGrad; momentum exactly). float32, the production dtype, is checked too, at 3e-6
# (on the sparse path and under the schedule; dense float32 measured 6e-7, left out for time).
STEPS = 100
TOLERANCE = {np.float64: 1e-6, np.float32: 3e-6}


def _trajectory(optimizer, table, gradients, dtype):
    """The variable's value after each step, stacked: [steps, rows, dim]."""
    var = tf.Variable(table.astype(dtype), name="embeddings")
    # One traced step instead of 100 eager apply_gradients calls (several times faster); the traced
    # step is what Keras's fit runs anyway.
    step = tf.function(lambda grad: optimizer.apply_gradients([(grad, var)]))
    values = []
    for g in gradients:
        if isinstance(g, tuple):
            ids, rows = g
            grad = tf.IndexedSlices(
                tf.constant(rows.astype(dtype)), tf.constant(ids), tf.constant(var.shape, tf.int64)
            )
        else:
            grad = tf.constant(g.astype(dtype))
        step(grad)
        values.append(var.numpy().copy())
    return var, np.stack(values)


def _assert_same_trajectory(ours, theirs, dtype):
    assert ours.shape == theirs.shape == (STEPS, ROWS, DIM)
    assert np.abs(theirs[-1] - theirs[0]).max() > 0.1, "the weights should move"
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOLERANCE[dtype])


@pytest.mark.parametrize("kind", sorted(PAIRS))
@pytest.mark.parametrize("path", ["vanilla", "group"])
def test_zero_lambdas_equal_keras_on_dense_gradients(kind, path, dtype=np.float64):
    group, keras = PAIRS[kind]
    regularize = "embeddings" if path == "group" else None
    table, grads = _initial_table(), _dense_gradients(STEPS)
    opt = group(regularize=regularize)
    var, ours = _trajectory(opt, table, grads, dtype)
    assert opt.is_regularized(var) == (path == "group")
    _, theirs = _trajectory(keras(), table, grads, dtype)
    _assert_same_trajectory(ours, theirs, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_zero_lambdas_equal_keras_on_sparse_gradients_touching_every_row(kind, dtype):
    # tf_keras decays every row each step; lazy Group updates agree when every row is in the batch.
    group, keras = PAIRS[kind]
    rng = np.random.RandomState(5)
    grads = []
    for _ in range(STEPS):
        ids = np.concatenate([rng.permutation(ROWS), rng.randint(0, ROWS, 5)]).astype(np.int64)
        grads.append((ids, rng.randn(len(ids), DIM)))
    opt = group()
    var, ours = _trajectory(opt, _initial_table(), grads, dtype)
    assert opt.is_regularized(var)
    _, theirs = _trajectory(keras(), _initial_table(), grads, dtype)
    _assert_same_trajectory(ours, theirs, dtype)


@pytest.mark.parametrize(
    "kind, dtype",
    [("adam", np.float64), ("adam", np.float32), ("momentum", np.float64)],
    ids=["adam-float64", "adam-float32", "momentum-float64"],
)
def test_zero_lambdas_equal_keras_under_a_learning_rate_schedule(kind, dtype):
    # The learning rate halves every 25 steps: 0.05 down to ~0.0031 at step 100.
    schedule = tf_keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=25, decay_rate=0.5)
    if kind == "adam":
        ours_opt, theirs_opt = optim.GroupAdam(schedule, regularize="."), tf_keras.optimizers.Adam(
            schedule
        )
    else:
        ours_opt = optim.GroupMomentum(schedule, regularize=".")
        theirs_opt = tf_keras.optimizers.SGD(schedule, momentum=0.9)
    grads = _dense_gradients(STEPS)
    var, ours = _trajectory(ours_opt, _initial_table(), grads, dtype)
    assert ours_opt.is_regularized(var)
    _, theirs = _trajectory(theirs_opt, _initial_table(), grads, dtype)
    assert float(ours_opt.learning_rate.numpy()) < 0.004  # the schedule did decay
    _assert_same_trajectory(ours, theirs, dtype)


def test_zero_lambdas_do_not_zero_a_late_row_with_a_zero_gradient():
    # The reference adds Adam's epsilon term only on the global first step, which zeroes such a row;
    # the product uses the row's own first update.
    table = _initial_table()
    grads = [(np.array([0, 1], np.int64), np.ones((2, DIM), np.float32))] * 3
    grads.append((np.array([5], np.int64), np.zeros((1, DIM), np.float32)))
    var = _run(optim.GroupAdam(0.05), table, grads)
    np.testing.assert_allclose(var.numpy()[5], table[5], rtol=1e-6)


# --- with lambdas: the NumPy transcription of the notes ---------------------------------------------


LAMBDAS = {"l1": 0.02, "l2": 0.05, "l21": 0.08}


@pytest.mark.parametrize("amsgrad", [False, True])
def test_group_adam_matches_the_notes(amsgrad):
    schedule = tf_keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=3, decay_rate=0.7)
    steps = 10
    lrs = [0.05 * 0.7 ** (t / 3) for t in range(steps)]
    table = _initial_table()
    grads = _sparse_gradients(steps, late_rows=(3, 7))
    cls = optim.GroupAMSGrad if amsgrad else optim.GroupAdam
    lambdas = {"l1": 0.2, "l2": 0.5, "l21": 1.5}  # scaled by lr inside: strong enough to prune
    opt = cls(schedule, **lambdas)
    var = _run(opt, table, grads)
    expected, state = ref.group_adam(table, grads, lrs, amsgrad=amsgrad, **lambdas)
    np.testing.assert_allclose(var.numpy(), expected, rtol=1e-4, atol=1e-6)
    for name in ("m", "v", "z"):
        np.testing.assert_allclose(_slot(opt, var, name).numpy(), state[name], rtol=1e-4, atol=1e-6)
    assert (np.abs(expected).sum(axis=1) == 0).any(), "the case should prune some rows"


def test_group_adagrad_matches_the_notes():
    table = _initial_table()
    grads = _sparse_gradients(10, late_rows=(3, 7))
    lambdas = {"l1": 0.3, "l2": 0.1, "l21": 2.0}
    opt = optim.GroupAdagrad(0.1, initial_accumulator_value=0.1, **lambdas)
    var = _run(opt, table, grads)
    expected, state = ref.group_adagrad(table, grads, 0.1, **lambdas)
    np.testing.assert_allclose(var.numpy(), expected, rtol=1e-4, atol=1e-6)
    for name in ("accumulator", "z"):
        np.testing.assert_allclose(_slot(opt, var, name).numpy(), state[name], rtol=1e-4, atol=1e-6)
    assert (np.abs(expected).sum(axis=1) == 0).any()


def test_group_momentum_matches_the_notes():
    table = _initial_table()
    grads = _sparse_gradients(10, late_rows=(3, 7))
    lambdas = {"l1": 0.5, "l2": 0.5, "l21": 6.0}
    opt = optim.GroupMomentum(0.05, momentum=0.9, **lambdas)
    var = _run(opt, table, grads)
    expected, state = ref.group_momentum(table, grads, 0.05, **lambdas)
    np.testing.assert_allclose(var.numpy(), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_slot(opt, var, "z").numpy(), state["z"], rtol=1e-4, atol=1e-6)
    assert (np.abs(expected).sum(axis=1) == 0).any()


def test_group_momentum_step_is_the_exact_minimiser_of_its_subproblem():
    """Each GroupMomentum step equals a numerical minimiser of Algorithm 1's subproblem (V_t = 1).

    In the paper's notation (arXiv 2107.14432, Algorithm 1; docs/optim.md; alpha_t = lr, m_t = gamma*m_{t-1} + g_t,
    V_t = 1, so Q_1 = 1 on a row's first step and Q_t = 0 after), per row:

        z_t     = z_{t-1} + m_t - Q_t * x_t / alpha
        x_{t+1} = argmin_x  z_t.x + ||x||^2 / (2 alpha) + l1 ||x||_1 + l21 sqrt(d) ||x||_2 + l2 ||x||^2

    z_t is recomputed here from the gradients and the optimizer's own x_t (not read from its slots),
    and the argmin is found by scipy's Nelder-Mead from several starts, none of them the closed form.
    """
    scipy_optimize = pytest.importorskip("scipy.optimize")
    rows, d = 6, 3
    lr, gamma, l1, l2, l21 = 0.5, 0.9, 0.3, 0.4, 0.35
    rng = np.random.RandomState(0)
    # Rows 4 and 5: small weights and weak gradients, so that l21 prunes them (row 5 comes back).
    row_scale = np.array([2.0, 1.0, 1.0, 0.5, 0.1, 0.1])
    table = rng.randn(rows, d) * 0.5 * np.array([1, 1, 1, 1, 0.1, 0.1])[:, None]
    opt = optim.GroupMomentum(lr, momentum=gamma, l1=l1, l2=l2, l21=l21)
    var = tf.Variable(table, name="embeddings")  # float64: the comparison is to ~1e-7
    m, z = np.zeros((rows, d)), np.zeros((rows, d))
    seen = np.zeros(rows, bool)

    def objective(x, z_row):
        return (z_row @ x + x @ x / (2 * lr) + l1 * np.abs(x).sum()
                + l21 * np.sqrt(d) * np.linalg.norm(x) + l2 * x @ x)

    def numerical_minimiser(z_row):
        best = None
        for start in (np.zeros(d), -lr * z_row, rng.randn(d)):  # origin, unregularized optimum, random
            for _ in range(2):  # restart Nelder-Mead from where it stopped
                result = scipy_optimize.minimize(
                    objective, start, args=(z_row,), method="Nelder-Mead",
                    options={"xatol": 1e-10, "fatol": 1e-14},
                )
                start = result.x
            if best is None or result.fun < best.fun:
                best = result
        return best

    kinds = set()
    for _ in range(4):
        ids = np.concatenate([rng.permutation(rows), rng.randint(0, rows, 3)])  # all rows, duplicates
        values = rng.randn(len(ids), d) * row_scale[ids][:, None]
        x_t = var.numpy().copy()
        opt.apply_gradients([(tf.IndexedSlices(tf.constant(values), tf.constant(ids),
                                               tf.constant([rows, d], tf.int64)), var)])
        x_next = var.numpy()
        gradient = np.zeros((rows, d))
        np.add.at(gradient, ids, values)
        for r in range(rows):
            m[r] = gamma * m[r] + gradient[r]
            z[r] = z[r] + m[r] - (0.0 if seen[r] else 1.0) * x_t[r] / lr
            seen[r] = True
            best = numerical_minimiser(z[r])
            np.testing.assert_allclose(x_next[r], best.x, rtol=0, atol=1e-5)
            # The step is at least as good as anything the numerical search found.
            assert objective(x_next[r], z[r]) <= best.fun + 1e-12
            kinds.add("pruned" if np.all(x_next[r] == 0) else
                      "some coordinates zero" if np.any(x_next[r] == 0) else "dense")
    assert kinds == {"pruned", "some coordinates zero", "dense"}, "every branch of the closed form"


# --- lazy rows, duplicates, pruning -------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_rows_not_in_the_batch_are_untouched(kind):
    group, _ = PAIRS[kind]
    opt = group(**LAMBDAS)
    table = _initial_table()
    var = _run(opt, table, _sparse_gradients(4, late_rows=(3, 7)))  # rows 3, 7 only late
    before = {name: _slot(opt, var, name).numpy().copy() for name in opt._slot_names + ("z",)}
    before_w = var.numpy().copy()
    opt.apply_gradients([(_slices(np.array([0, 1, 0]), np.ones((3, DIM), np.float32)), var)])
    untouched = [r for r in range(ROWS) if r not in (0, 1)]
    np.testing.assert_array_equal(var.numpy()[untouched], before_w[untouched])
    for name, value in before.items():
        np.testing.assert_array_equal(_slot(opt, var, name).numpy()[untouched], value[untouched])
    assert not np.array_equal(var.numpy()[[0, 1]], before_w[[0, 1]])


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_duplicate_ids_are_summed(kind):
    group, _ = PAIRS[kind]
    rng = np.random.RandomState(0)
    values = rng.randn(5, DIM).astype(np.float32)
    ids = np.array([3, 1, 3, 3, 1], np.int64)
    summed = np.stack([values[[0, 2, 3]].sum(0), values[[1, 4]].sum(0)])
    with_duplicates = _run(group(**LAMBDAS), _initial_table(), [(ids, values)] * 2)
    pre_summed = _run(group(**LAMBDAS), _initial_table(), [(np.array([3, 1]), summed)] * 2)
    np.testing.assert_allclose(with_duplicates.numpy(), pre_summed.numpy(), rtol=1e-5, atol=1e-7)


def test_l21_prunes_whole_rows_and_a_pruned_row_can_come_back():
    opt = optim.GroupAdam(0.01, l21=0.05)
    var = tf.Variable(_initial_table(), name="embeddings")
    small = _slices(np.arange(ROWS), np.full((ROWS, DIM), 1e-3, np.float32))
    for _ in range(3):
        opt.apply_gradients([(small, var)])
    assert np.all(var.numpy() == 0.0), "weak gradients: every row pruned"
    assert optim.sparsity([var])["fraction"] == 1.0
    strong = _slices(np.array([2]), np.full((1, DIM), -1.0, np.float32))
    for _ in range(20):
        opt.apply_gradients([(strong, var)])
    assert np.all(var.numpy()[2] > 0.0), "a consistent strong gradient revives the row"
    assert np.all(var.numpy()[[0, 1, 3]] == 0.0)


def test_regex_selected_dense_kernel_gets_input_rows_pruned():
    # A dense kernel [inputs, units] regularized by name: its rows (one per input feature) are groups.
    opt = optim.GroupAdagrad(0.1, l21=1.0, regularize="kernel")
    kernel = tf.Variable(np.zeros((3, 2), np.float32), name="kernel")
    gradient = tf.constant([[5.0, -5.0], [1e-3, 1e-3], [-4.0, 4.0]])
    opt.apply_gradients([(gradient, kernel)])
    value = kernel.numpy()
    assert np.all(value[1] == 0.0) and np.all(value[[0, 2]] != 0.0)


def test_l1_zeroes_coordinates_without_removing_rows():
    opt = optim.GroupAdagrad(0.1, l1=0.5)
    var = tf.Variable(np.zeros((2, 2), np.float32), name="embeddings")
    opt.apply_gradients([(_slices(np.array([0]), np.array([[0.1, 5.0]], np.float32), 2, 2), var)])
    row = var.numpy()[0]
    assert row[0] == 0.0 and row[1] != 0.0


def test_rank_one_table_groups_are_single_coordinates():
    opt = optim.GroupAdam(0.05, l21=0.02)
    var = tf.Variable(np.full([6], 0.1, np.float32), name="bias_table")
    grad = tf.IndexedSlices(
        tf.constant([1e-4, 5.0, 5.0]), tf.constant([0, 2, 2], tf.int64), tf.constant([6], tf.int64)
    )
    opt.apply_gradients([(grad, var)])
    value = var.numpy()
    assert value[0] == 0.0 and value[2] != 0.0 and np.all(value[[1, 3, 4, 5]] == 0.1)


# --- arguments, variable selection, config -------------------------------------------------------------


@pytest.mark.parametrize("cls", [optim.GroupAdam, optim.GroupAdagrad, optim.GroupMomentum,
                                 optim.GroupAMSGrad])
@pytest.mark.parametrize("argument", ["l1", "l2", "l21"])
def test_negative_lambda_is_a_value_error_naming_it(cls, argument):
    with pytest.raises(ValueError, match=argument):
        cls(**{argument: -0.1})


def test_defaults_and_signature():
    opt = optim.GroupAdam()
    assert (opt.beta_1, opt.beta_2, opt.epsilon, opt.l1, opt.l2, opt.l21, opt.regularize) == (
        0.9, 0.999, 1e-7, 0.0, 0.0, 0.0, None)
    assert float(opt.learning_rate.numpy()) == pytest.approx(0.001)
    assert optim.GroupAdagrad().initial_accumulator_value == 0.1
    assert optim.GroupMomentum().momentum == 0.9
    assert optim.GroupAMSGrad().amsgrad
    assert isinstance(opt, tf_keras.optimizers.Optimizer)


def test_only_sparse_gradients_and_regex_matches_are_regularized():
    table = tf.Variable(_initial_table(), name="table")
    kernel = tf.Variable(np.ones((3, 2), np.float32), name="dense_kernel")
    bias = tf.Variable(np.ones((2,), np.float32), name="dense_bias")
    grads = [
        (_slices(np.array([0, 1]), np.ones((2, DIM), np.float32)), table),
        (tf.ones((3, 2)), kernel),
        (tf.ones((2,)), bias),
    ]
    default = optim.GroupAdam(0.01, l21=0.1)
    default.apply_gradients(grads)
    assert [default.is_regularized(v) for v in (table, kernel, bias)] == [True, False, False]
    assert len(default._row_states) == 1  # a dual z only where regularized
    selected = optim.GroupAdam(0.01, l21=0.1, regularize="kernel")
    selected.apply_gradients(grads)
    assert [selected.is_regularized(v) for v in (table, kernel, bias)] == [True, True, False]


@pytest.mark.parametrize("make, names", [
    (lambda: optim.GroupAdam(0.01, l21=0.1), ("m", "v", "z")),
    (lambda: optim.GroupAMSGrad(0.01, l21=0.1), ("m", "v", "vhat", "z")),
    (lambda: optim.GroupAdagrad(0.01, l21=0.1, initial_accumulator_value=0.5), ("accumulator", "z")),
    (lambda: optim.GroupMomentum(0.01, l21=0.1), ("m", "z")),
])
def test_a_regularized_table_keeps_its_row_state_in_one_slot(make, names):
    """The moments and the dual of each row side by side ([rows, parts, d]); other variables keep one
    slot per moment. Initial values per part: Adagrad's accumulator starts at its initial value."""
    table = tf.Variable(_initial_table(), name="table")
    kernel = tf.Variable(np.ones((3, 2), np.float32), name="dense_kernel")
    opt = make()
    opt.apply_gradients([(_slices(np.array([0, 1]), np.ones((2, DIM), np.float32)), table),
                         (tf.ones((3, 2)), kernel)])
    assert opt.row_state_names == names
    state = opt.row_state(table)
    assert state.shape == (table.shape[0], len(names), DIM)
    assert "row_state" in state.name
    parts = opt.split_row_state(state.numpy(), 2)
    untouched = parts[names[0]][2:]
    assert np.all(untouched == (0.5 if names[0] == "accumulator" else 0.0))
    assert np.all(parts["z"][2:] == 0) and np.all(parts["z"][:2] != 0)
    assert not opt.is_regularized(kernel)
    assert all(opt._slots(kernel)[name].shape == kernel.shape for name in names[:-1])
    assert sum("row_state" in v.name for v in opt.variables()) == 1


def test_explicit_build_before_any_gradient_regularizes_embedding_tables():
    model = tf_keras.Sequential([
        tf_keras.layers.Embedding(10, 3, name="embedding_a"), tf_keras.layers.Dense(1)
    ])
    model.build((None, 2))
    opt = optim.GroupAdam(l21=0.1)
    opt.build(model.trainable_variables)
    assert [opt.is_regularized(v) for v in model.trainable_variables] == [True, False, False]


def test_get_config_round_trip_and_keras_serialization():
    opt = optim.GroupAdam(0.02, beta_1=0.8, l1=0.1, l2=0.2, l21=0.3, regularize="emb")
    config = opt.get_config()
    clone = optim.GroupAdam.from_config(config)
    for key in ("beta_1", "beta_2", "epsilon", "l1", "l2", "l21", "regularize", "amsgrad"):
        assert getattr(clone, key) == getattr(opt, key)
    assert float(clone.learning_rate.numpy()) == pytest.approx(0.02)
    for cls in (optim.GroupAdagrad, optim.GroupMomentum, optim.GroupAMSGrad):
        original = cls(l21=0.5)
        restored = tf_keras.optimizers.deserialize(tf_keras.optimizers.serialize(original))
        assert type(restored) is cls and restored.l21 == 0.5


# --- XLA ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["adam", "adagrad"])
def test_xla_compiled_step_equals_eager(kind):
    group, _ = PAIRS[kind]
    grads = _sparse_gradients(5, late_rows=(3,))
    eager = _run(group(**LAMBDAS), _initial_table(), grads)

    opt = group(**LAMBDAS)
    var = tf.Variable(_initial_table(), name="embeddings")

    @tf.function(jit_compile=True)
    def step(values, ids):
        opt.apply_gradients([(tf.IndexedSlices(values, ids, tf.constant([ROWS, DIM], tf.int64)), var)])

    for ids, values in grads:
        step(tf.constant(values), tf.constant(ids))
    np.testing.assert_allclose(var.numpy(), eager.numpy(), rtol=1e-5, atol=1e-7)


# --- the sparse step on the distinct rows: compiled (default) and uncompiled ----------------------


BIG_ROWS = 1500  # > 512 distinct ids per batch: the compiled step runs over several blocks


def _big_sparse_gradients(steps, seed=7, batch=2500):
    """Batches of ids with 1,100 or more distinct ids of BIG_ROWS and Zipf-like duplicates, in
    random order; rows 0-99 are never in a batch."""
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(steps):
        spread = rng.choice(np.arange(100, BIG_ROWS), 1100, replace=False)
        popular = 100 + (rng.zipf(1.2, batch - 1100) * 7919) % (BIG_ROWS - 100)
        ids = rng.permutation(np.concatenate([spread, popular])).astype(np.int64)
        out.append((ids, rng.randn(batch, DIM).astype(np.float32)))
    return out


def test_sparse_step_is_compiled_by_default_unless_jit_compile_is_false():
    grads = _sparse_gradients(2)
    compiled = optim.GroupAdam(0.05, l21=0.01)
    _run(compiled, _initial_table(), grads)
    assert compiled._update_step_xla.experimental_get_tracing_count() >= 1
    assert compiled.get_config()["jit_compile"] is True
    uncompiled = optim.GroupAdam(0.05, l21=0.01, jit_compile=False)
    _run(uncompiled, _initial_table(), grads)
    assert uncompiled._update_step_xla.experimental_get_tracing_count() == 0
    assert uncompiled.get_config()["jit_compile"] is False
    assert optim.GroupAdam.from_config(uncompiled.get_config())._compile_sparse_step is False


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_compiled_and_uncompiled_sparse_steps_agree_over_several_blocks(kind):
    # float64: in float32 the two paths' gradient sums (hundreds of copies of a popular id) round
    # differently in the last bit, which the duals of Adagrad (sums of raw gradients) carry along.
    group, _ = PAIRS[kind]
    table = _initial_table(rows=BIG_ROWS, dim=DIM).astype(np.float64)
    grads = _big_sparse_gradients(4)
    distinct = [len(np.unique(ids)) for ids, _ in grads]
    assert min(distinct) > 2 * 512, distinct  # several blocks of the compiled step

    def run(**kwargs):
        opt = group(**LAMBDAS, **kwargs)
        var = tf.Variable(table, name="embeddings")
        for ids, values in grads:
            opt.apply_gradients([(_slices(ids, values.astype(np.float64), BIG_ROWS, DIM), var)])
        return opt, var

    compiled, compiled_var = run()
    uncompiled, uncompiled_var = run(jit_compile=False)
    assert compiled._update_step_xla.experimental_get_tracing_count() >= 1
    assert uncompiled._update_step_xla.experimental_get_tracing_count() == 0
    np.testing.assert_allclose(compiled_var.numpy(), uncompiled_var.numpy(), rtol=1e-9, atol=1e-12)
    for name in compiled._slot_names + ("z",):
        np.testing.assert_allclose(_slot(compiled, compiled_var, name).numpy(),
                                   _slot(uncompiled, uncompiled_var, name).numpy(),
                                   rtol=1e-9, atol=1e-12, err_msg=name)
    # Rows never in a batch: untouched, bit for bit, in both.
    np.testing.assert_array_equal(compiled_var.numpy()[:100], table[:100])
    assert np.all(_slot(compiled, compiled_var, "z").numpy()[:100] == 0)


def test_group_adam_matches_the_notes_over_several_blocks():
    table = _initial_table(rows=BIG_ROWS, dim=DIM)
    grads = _big_sparse_gradients(4, seed=8)
    lambdas = {"l1": 0.2, "l2": 0.5, "l21": 1.5}
    opt = optim.GroupAdam(0.05, **lambdas)
    var = tf.Variable(table, name="embeddings")
    step = tf.function(
        lambda values, ids: opt.apply_gradients(
            [(tf.IndexedSlices(values, ids, tf.constant([BIG_ROWS, DIM], tf.int64)), var)]),
        jit_compile=True,
    )
    for ids, values in grads:
        step(tf.constant(values), tf.constant(ids))
    expected, state = ref.group_adam(table, grads, 0.05, **lambdas)
    np.testing.assert_allclose(var.numpy(), expected, rtol=1e-4, atol=1e-6)
    for name in ("m", "v", "z"):
        np.testing.assert_allclose(_slot(opt, var, name).numpy(), state[name], rtol=1e-4, atol=1e-6)
    assert (np.abs(expected[100:]).sum(axis=1) == 0).any(), "the case should prune some rows"


@pytest.mark.parametrize("jit", [False, True])
def test_sparse_step_with_a_batch_length_unknown_when_tracing(jit):
    # Keras traces its train step with the batch dimension None; XLA learns it when compiling.
    # An empty batch too (no block at all).
    grads = _sparse_gradients(4) + [(np.zeros(0, np.int64), np.zeros((0, DIM), np.float32))]
    expected = _run(optim.GroupAdam(0.05, **LAMBDAS, jit_compile=False), _initial_table(), grads)
    opt = optim.GroupAdam(0.05, **LAMBDAS)
    var = tf.Variable(_initial_table(), name="embeddings")
    step = tf.function(
        lambda values, ids: opt.apply_gradients(
            [(tf.IndexedSlices(values, ids, tf.constant([ROWS, DIM], tf.int64)), var)]),
        jit_compile=jit,
        input_signature=[tf.TensorSpec([None, DIM], tf.float32), tf.TensorSpec([None], tf.int64)],
    )
    for ids, values in grads:
        step(tf.constant(values), tf.constant(ids))
    np.testing.assert_allclose(var.numpy(), expected.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("ids", [[2], [2, 2, 2], [5, 1]])
def test_compiled_step_on_constant_ids(ids):
    # Ids known when compiling make XLA fold the number of distinct rows to a constant; an earlier
    # form of the block loop was skipped entirely by XLA when that constant was 1.
    values = np.ones((len(ids), DIM), np.float32)
    expected = _run(optim.GroupAdam(0.05, **LAMBDAS, jit_compile=False), _initial_table(),
                    [(np.array(ids, np.int64), values)])
    opt = optim.GroupAdam(0.05, **LAMBDAS)
    var = tf.Variable(_initial_table(), name="embeddings")
    tf.function(lambda: opt.apply_gradients([(_slices(np.array(ids, np.int64), values), var)]),
                jit_compile=True)()
    np.testing.assert_allclose(var.numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)
    assert not np.array_equal(var.numpy()[ids], _initial_table()[ids])


# --- several tables in one apply_gradients: stepped together, the same as one by one --------------


def _tables_case():
    """Three 4-wide tables (one of them never pruned: l21 set to 0), one 3-wide table, a dense
    kernel; sparse gradients with duplicate ids and rows that no batch touches."""
    shapes = {"a": (ROWS, DIM), "b": (7, DIM), "c": (ROWS, DIM), "d": (5, 3)}
    tables = {k: _initial_table(seed=i, rows=r, dim=d) for i, (k, (r, d)) in enumerate(shapes.items())}
    kernel = np.random.RandomState(9).randn(DIM, 2).astype(np.float32)
    rng = np.random.RandomState(4)
    steps = []
    for _ in range(6):
        grads = {}
        for k, (rows, dim) in shapes.items():
            ids = rng.choice(rows - 2, 2 * rows).astype(np.int64)  # the last 2 rows: never in a batch
            grads[k] = (ids, rng.randn(len(ids), dim).astype(np.float32))
        steps.append((grads, rng.randn(DIM, 2).astype(np.float32)))
    return shapes, tables, kernel, steps


# l21 per optimizer that prunes some rows of table "a" in 6 steps, not all (measured)
TABLE_L21 = {"adam": 0.1, "amsgrad": 0.1, "adagrad": 2.0, "momentum": 3.0}
TABLE_LAMBDAS = dict(LAMBDAS, l21=TABLE_L21["adam"])


def _run_tables(optimizer, together, compiled_step=False):
    shapes, tables, kernel, steps = _tables_case()
    variables = {k: tf.Variable(v, name=f"{k}/embeddings") for k, v in tables.items()}
    dense = tf.Variable(kernel, name="kernel")
    optimizer.build(list(variables.values()) + [dense])
    optimizer.l21_variable(variables["c"]).assign(0.0)

    def apply(step_grads, dense_grad):
        pairs = [(tf.IndexedSlices(v, i, tf.constant(shapes[k], tf.int64)),
                  variables[k]) for k, (i, v) in step_grads.items()]
        if together:
            optimizer.apply_gradients(pairs + [(dense_grad, dense)])
        else:
            for pair in pairs:
                optimizer.apply_gradients([pair])
                optimizer.iterations.assign_sub(1)  # one training step, as together
            optimizer.apply_gradients([(dense_grad, dense)])

    fn = tf.function(apply, jit_compile=compiled_step)
    for step_grads, dense_grad in steps:
        fn(step_grads, dense_grad)
    state = {k: (v.numpy(), *(_slot(optimizer, v, n).numpy() for n in optimizer._slot_names + ("z",)))
             for k, v in variables.items()}
    return state, dense.numpy(), tables


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_tables_stepped_together_uncompiled_equal_one_by_one_bit_for_bit(kind):
    group, _ = PAIRS[kind]
    lambdas = dict(LAMBDAS, l21=TABLE_L21[kind])
    together, dense_together, tables = _run_tables(group(**lambdas, jit_compile=False), True)
    apart, dense_apart, _ = _run_tables(group(**lambdas, jit_compile=False), False)
    for k in together:
        for ours, theirs in zip(together[k], apart[k]):
            np.testing.assert_array_equal(ours, theirs, err_msg=k)
        np.testing.assert_array_equal(together[k][0][-2:], tables[k][-2:])  # untouched rows
        assert np.all(together[k][-1][-2:] == 0)
        assert not np.array_equal(together[k][0][:-2], tables[k][:-2])
    np.testing.assert_array_equal(dense_together, dense_apart)
    norms = np.abs(together["a"][0][:-2]).sum(axis=1)
    assert (norms == 0).any() and (norms > 0).any(), "the case should prune some rows, not all"
    assert not (np.abs(together["c"][0][:-2]).sum(axis=1) == 0).any(), "table c has l21 0"


def test_tables_stepped_together_compiled_equal_uncompiled():
    compiled = optim.GroupAdam(0.05, **TABLE_LAMBDAS)
    together, dense_together, _ = _run_tables(compiled, True)
    assert compiled._sparse_steps_xla.experimental_get_tracing_count() == 1
    assert compiled._update_step_xla.experimental_get_tracing_count() == 0
    uncompiled, dense_uncompiled, _ = _run_tables(optim.GroupAdam(0.05, **TABLE_LAMBDAS, jit_compile=False), True)
    in_xla, _, _ = _run_tables(optim.GroupAdam(0.05, **TABLE_LAMBDAS), True, compiled_step=True)
    for k in together:
        for a, b, c in zip(together[k], uncompiled[k], in_xla[k]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=k)
            np.testing.assert_allclose(c, b, rtol=1e-5, atol=1e-7, err_msg=k)
    np.testing.assert_allclose(dense_together, dense_uncompiled, rtol=1e-6)
