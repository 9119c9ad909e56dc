"""The pure math of optim.group_step against NumPy and against the definition of the subproblem."""

import numpy as np
import pytest
import tensorflow as tf

from optim import group_step as gs


def test_soft_threshold_matches_definition():
    x = np.array([-3.0, -1.0, -0.5, 0.0, 0.2, 1.0, 2.5], np.float32)
    expected = np.sign(x) * np.maximum(np.abs(x) - 1.0, 0.0)
    np.testing.assert_allclose(gs.soft_threshold(tf.constant(x), 1.0).numpy(), expected)
    # threshold 0 is the identity, exactly
    np.testing.assert_array_equal(gs.soft_threshold(tf.constant(x), 0.0).numpy(), x)


def test_group_norm_is_per_row_and_broadcastable():
    x = tf.constant(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    norm = gs.group_norm(x).numpy()
    assert norm.shape == (2, 1, 1)
    np.testing.assert_allclose(norm[:, 0, 0], np.linalg.norm(x.numpy().reshape(2, -1), axis=1))
    np.testing.assert_array_equal(gs.group_norm(tf.constant([-2.0, 3.0])).numpy(), [2.0, 3.0])
    assert gs.group_size((10, 3, 4)) == 12 and gs.group_size((10,)) == 1


def test_group_lasso_solve_formula_and_pruning():
    rng = np.random.RandomState(0)
    z = rng.randn(6, 5).astype(np.float32)
    z[2] *= 0.01  # a row with a tiny dual: pruned by the group threshold
    denominator = rng.rand(6, 5).astype(np.float32) + 0.5
    l1, l2, thr = 0.3, 0.05, 0.4
    w = gs.group_lasso_solve(z, denominator, l1, l2, thr).numpy()
    s = np.clip(z, -l1, l1) - z
    for r in range(6):
        norm = np.linalg.norm(s[r])
        expected = s[r] * (1 - thr / norm) / (denominator[r] + 2 * l2) if norm > thr else 0 * s[r]
        np.testing.assert_allclose(w[r], expected, rtol=1e-5, atol=1e-7)
    assert np.all(w[2] == 0.0)
    # l1 zeroes single coordinates whose |z| <= l1
    assert np.all(w[np.abs(z) <= l1] == 0.0)


def test_group_lasso_solve_zero_lambdas_is_minus_z_over_d_and_nan_free():
    z = np.array([[1.0, -2.0], [0.0, 0.0]], np.float32)
    w = gs.group_lasso_solve(z, 2.0, 0.0, 0.0, 0.0).numpy()
    np.testing.assert_array_equal(w, -z / 2.0)
    assert np.all(np.isfinite(w))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closed_form_minimises_the_subproblem_for_a_scalar_denominator(seed):
    # argmin_w  z.w + D/2 |w|^2 + l1 |w|_1 + thr |w|_2 + l2 |w|^2  (a row, scalar preconditioner D)
    rng = np.random.RandomState(seed)
    z = rng.randn(1, 8)
    d_value, l1, l2, thr = 1.7, 0.4, 0.3, 0.8

    def objective(w):
        return (z * w).sum() + d_value / 2 * (w**2).sum() + l1 * np.abs(w).sum() + \
            thr * np.linalg.norm(w) + l2 * (w**2).sum()

    # With D/2 |w|^2 in the objective, the closed form's denominator is D (+ 2 l2).
    w_star = gs.group_lasso_solve(tf.constant(z), d_value, l1, l2, thr).numpy()
    best = objective(w_star)
    for _ in range(300):
        candidate = w_star + rng.randn(*w_star.shape) * rng.choice([1e-3, 1e-2, 1e-1])
        assert objective(candidate) >= best - 1e-12
    assert objective(np.zeros_like(w_star)) >= best - 1e-12


def test_group_lasso_step_telescopes_to_the_vanilla_step_with_zero_lambdas():
    # With all lambdas 0: w_{t+1} = w_t - increment_t / D_t, for any D sequence and any w_1.
    rng = np.random.RandomState(3)
    w = tf.constant(rng.randn(4, 3))
    z = tf.zeros_like(w)
    expected = w.numpy().copy()
    d_old = tf.constant(rng.rand(4, 3) + 0.1)  # ignored on the first step (z == 0)
    for _ in range(6):
        increment = tf.constant(rng.randn(4, 3))
        d_new = d_old + tf.constant(rng.rand(4, 3))
        w, z = gs.group_lasso_step(w, z, increment, d_old, d_new, 0.0, 0.0, 0.0)
        expected -= increment.numpy() / d_new.numpy()
        d_old = d_new
        np.testing.assert_allclose(w.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_first_step_counts_the_previous_denominator_as_zero():
    w = tf.constant([[2.0, -1.0]])
    z = tf.zeros_like(w)
    z_new = gs.dual_update(z, w, tf.constant([[0.5, 0.5]]), tf.constant(7.0), tf.constant(3.0))
    np.testing.assert_allclose(z_new.numpy(), [[0.5 - 3.0 * 2.0, 0.5 + 3.0]])
    z_next = gs.dual_update(z_new, w, tf.constant([[0.0, 0.0]]), tf.constant(3.0), tf.constant(4.0))
    np.testing.assert_allclose(z_next.numpy(), z_new.numpy() - 1.0 * w.numpy())


def _dual_update_by_select(z, w, increment, denominator_old, denominator_new):
    denominator_old = tf.where(tf.equal(z, 0.0), tf.zeros_like(denominator_old), denominator_old)
    return z + increment - (denominator_new - denominator_old) * w


@pytest.mark.parametrize("jit", [False, True])
def test_dual_update_is_the_select_on_never_stepped_coordinates_bit_for_bit(jit):
    # Coordinates whose z is still 0 (either sign) take D_{t-1} = 0, even an infinite D_{t-1}; every
    # other coordinate takes its own D_{t-1}: the same bits as tf.where(z == 0, 0, D_{t-1}), compiled
    # or not (XLA may contract the arithmetic differently from NumPy, so the reference is TensorFlow's).
    rng = np.random.default_rng(0)
    z = rng.normal(size=(64, 8)).astype(np.float32)
    z[::3] = 0.0
    z[1::7, :2] = -0.0
    w = rng.normal(size=z.shape).astype(np.float32)
    increment = rng.normal(size=z.shape).astype(np.float32)
    old = (np.abs(rng.normal(size=z.shape)) + 1e-7).astype(np.float32)
    old[::6] = np.inf  # only on rows whose z is 0
    new = (old + np.abs(rng.normal(size=z.shape))).astype(np.float32)
    new[::6] = 2.0
    compile_ = (lambda f: tf.function(f, jit_compile=True)) if jit else (lambda f: f)
    for old_, new_ in ((old, new), (np.float32(3.0), np.float32(4.0))):
        args = [tf.constant(a) for a in (z, w, increment, old_, new_)]
        ours = compile_(gs.dual_update)(*args).numpy()
        expected = compile_(_dual_update_by_select)(*args).numpy()
        assert np.all(np.isfinite(ours))
        np.testing.assert_array_equal(ours.view(np.int32), expected.view(np.int32))
    first = gs.dual_update(*[tf.constant(a) for a in (z, w, increment, old, new)]).numpy()
    np.testing.assert_allclose(first[::3], (z + increment - new * w)[::3], rtol=1e-6)


def _sum_duplicates_numpy(values, ids, query_ids):
    """For each id of query_ids, the sum of the rows of values whose id is that id."""
    return np.stack([values[ids == i].sum(axis=0) for i in query_ids])


@pytest.mark.parametrize("n", [1, 7, 300])
def test_sum_duplicate_rows(n):
    rng = np.random.RandomState(n)
    ids = rng.randint(0, 5, n).astype(np.int64)
    values = rng.randn(n, 3).astype(np.float32)
    sorted_ids, totals = gs.sum_duplicate_rows(tf.constant(values), tf.constant(ids))
    assert sorted(ids.tolist()) == sorted_ids.numpy().tolist()
    np.testing.assert_allclose(
        totals.numpy(), _sum_duplicates_numpy(values, ids, sorted_ids.numpy()), rtol=1e-5, atol=1e-6
    )


def test_sum_duplicate_rows_compiles_with_static_shapes():
    # Under XLA the output keeps the input's static shape (no tf.unique, no bounded-dynamic shape).
    ids = tf.constant(np.random.RandomState(0).zipf(1.3, 4096) % 1000, tf.int64)
    values = tf.random.stateless_normal([4096, 8], seed=[1, 2])
    fn = tf.function(gs.sum_duplicate_rows, jit_compile=True)
    concrete = fn.get_concrete_function(
        tf.TensorSpec([4096, 8], tf.float32), tf.TensorSpec([4096], tf.int64)
    )
    assert [o.shape.as_list() for o in concrete.outputs] == [[4096], [4096, 8]]
    sorted_ids, totals = fn(values, ids)
    np.testing.assert_allclose(
        totals.numpy(), _sum_duplicates_numpy(values.numpy(), ids.numpy(), sorted_ids.numpy()), rtol=1e-4,
        atol=1e-4,
    )


@pytest.mark.parametrize("n", [0, 1, 128, 129, 5000, 40000])
@pytest.mark.parametrize("jit", [False, True])
def test_count_true_is_cumsum(n, jit):
    flags = np.random.RandomState(n).rand(n) < 0.4
    result = tf.function(gs.count_true, jit_compile=jit)(tf.constant(flags, tf.bool))
    np.testing.assert_array_equal(result.numpy(), np.cumsum(flags))


def test_adam_step_size_and_moments():
    m, v = gs.adam_moments(tf.constant(1.0), tf.constant(4.0), tf.constant(2.0), 1 - 0.9, 1 - 0.999)
    np.testing.assert_allclose([m.numpy(), v.numpy()], [0.9 + 0.2, 0.999 * 4 + 0.001 * 4], rtol=1e-6)
    alpha = gs.adam_step_size(tf.constant(0.1), 0.9, 0.999, tf.constant(3.0)).numpy()
    np.testing.assert_allclose(alpha, 0.1 * np.sqrt(1 - 0.999**3) / (1 - 0.9**3), rtol=1e-5)


# --- the distinct rows of a batch (uncompiled: tf.unique; compiled: static-shape hashing) ----------


def _first_appearance(ids):
    """NumPy: the distinct ids in order of first appearance, and each position's first position."""
    _, first_index, inverse = np.unique(ids, return_index=True, return_inverse=True)
    return ids[np.sort(first_index)], first_index[inverse]


def _colliding_ids(n, seed=0):
    """n distinct int64 ids (large and negative-free) of which some share a slot of
    first_positions's first hashing round, so that later rounds are exercised too."""
    ids = np.random.RandomState(seed).randint(0, 2**62, n).astype(np.int64)
    size = gs._HASH_SLOTS_PER_ID * n + 1
    with np.errstate(over="ignore"):
        top = (ids * np.int64(gs._HASH_MULTIPLIERS[0])) >> np.int64(33) & np.int64(0x7FFFFFFF)
    slots = top % size
    assert len(np.unique(slots)) < n, "the test needs a collision in the first round"
    return ids


@pytest.mark.parametrize("n", [1, 9, 300])
def test_unique_rows_is_tf_unique_and_segment_sum(n):
    rng = np.random.RandomState(n)
    ids = rng.randint(0, 7, n).astype(np.int64)
    values = rng.randn(n, 3).astype(np.float32)
    unique_ids, totals = gs.unique_rows(tf.constant(values), tf.constant(ids))
    expected_ids, _ = _first_appearance(ids)
    np.testing.assert_array_equal(unique_ids.numpy(), expected_ids)
    np.testing.assert_allclose(totals.numpy(), _sum_duplicates_numpy(values, ids, expected_ids),
                               rtol=1e-5, atol=1e-6)


def _padded_cases():
    rng = np.random.RandomState(0)
    zipf = (rng.zipf(1.3, 5000) % 700).astype(np.int64)
    return {
        "empty": np.zeros(0, np.int64),
        "one": np.array([4], np.int64),
        "duplicates": np.array([3, 1, 3, 3, 1, 0, 9, 0], np.int64),
        "zipf": zipf,
        "all distinct, colliding": _colliding_ids(3000),
        "int32": rng.randint(0, 50, 400).astype(np.int32),
    }


@pytest.mark.parametrize("case", sorted(_padded_cases()))
@pytest.mark.parametrize("mode", ["eager", "jit", "jit unknown length"])
def test_unique_rows_padded(case, mode):
    ids = _padded_cases()[case]
    n = len(ids)
    values = np.random.RandomState(n).randn(n, 3).astype(np.float32)
    fn = gs.unique_rows_padded
    if mode == "jit":
        fn = tf.function(fn, jit_compile=True)
    elif mode == "jit unknown length":
        fn = tf.function(fn, jit_compile=True, input_signature=[
            tf.TensorSpec([None, 3], tf.float32), tf.TensorSpec([None], tf.as_dtype(ids.dtype))])
    unique_ids, totals, count = fn(tf.constant(values), tf.constant(ids))
    assert unique_ids.shape == (n + 1,) and totals.shape == (n + 1, 3)
    expected_ids, _ = _first_appearance(ids)
    count = int(count)
    assert count == len(expected_ids)
    np.testing.assert_array_equal(unique_ids.numpy()[:count], expected_ids)  # tf.unique's order
    if count:
        np.testing.assert_allclose(totals.numpy()[:count],
                                   _sum_duplicates_numpy(values, ids, expected_ids),
                                   rtol=1e-5, atol=1e-5)
    assert np.all(unique_ids.numpy()[count:] == 0) and np.all(totals.numpy()[count:] == 0)


@pytest.mark.parametrize("jit", [False, True])
def test_first_positions_with_collisions_and_duplicates(jit):
    distinct = _colliding_ids(2000, seed=1)
    ids = np.random.RandomState(2).choice(distinct, 6000)  # every id collides or repeats
    result = tf.function(gs.first_positions, jit_compile=jit)(tf.constant(ids)).numpy()
    np.testing.assert_array_equal(result, _first_appearance(ids)[1])


def test_unique_rows_padded_has_static_shapes_under_xla():
    fn = tf.function(gs.unique_rows_padded, jit_compile=True)
    concrete = fn.get_concrete_function(
        tf.TensorSpec([4096, 8], tf.float32), tf.TensorSpec([4096], tf.int64))
    assert [o.shape.as_list() for o in concrete.outputs] == [[4097], [4097, 8], []]


@pytest.mark.parametrize("count, block", [(0, 4), (1, 4), (4, 4), (9, 4), (9, 16)])
@pytest.mark.parametrize("jit", [False, True])
def test_for_each_block_covers_exactly_the_first_count_positions(count, block, jit):
    # `count` is a constant here: XLA (TF 2.16, CPU) skipped the whole body of an earlier form of
    # the loop (counter stepping by block_size) when it was the constant 1.
    n = 12
    seen = tf.Variable(tf.zeros([n], tf.int32))
    calls = tf.Variable(0)

    def body(positions):
        assert positions.shape == (block,)
        seen.scatter_update(tf.IndexedSlices(positions + 1, positions))  # padding: a copy, same value
        calls.assign_add(1)

    tf.function(lambda: gs.for_each_block(tf.constant(count), block, body), jit_compile=jit)()
    np.testing.assert_array_equal(seen.numpy(), [p + 1 if p < count else 0 for p in range(n)])
    assert int(calls.numpy()) == -(-count // block)


@pytest.mark.parametrize("n", [5, 300, 40000])
def test_count_true_with_a_length_unknown_when_tracing(n):
    flags = np.random.RandomState(n).rand(n) < 0.4
    fn = tf.function(gs.count_true, jit_compile=True,
                     input_signature=[tf.TensorSpec([None], tf.bool)])
    np.testing.assert_array_equal(fn(tf.constant(flags)).numpy(), np.cumsum(flags))
