"""l21 as an optimizer variable (changed between steps, read inside the compiled step) and the
controller that sets it for a target sparsity or byte budget (optim.sparsity_control)."""

import math

import numpy as np
import pytest
import tensorflow as tf

import optim
from optim import sparsity_control as sc
from tests.optim import numpy_reference as ref
from tests.optim.test_optimizers import DIM, ROWS, _initial_table, _slices, _sparse_gradients

# --- l21 as a variable -------------------------------------------------------------------------------


def test_each_regularized_variable_has_a_float64_l21_variable_starting_at_l21():
    opt = optim.GroupAdam(0.05, l21=0.02)
    table = tf.Variable(_initial_table(), name="embeddings")
    kernel = tf.Variable(np.ones((3, 2), np.float32), name="kernel")
    opt.apply_gradients([(_slices(np.array([0, 1]), np.ones((2, DIM), np.float32)), table),
                         (tf.ones((3, 2)), kernel)])
    variable = opt.l21_variable(table)
    assert variable.dtype == tf.float64 and variable.shape == () and not variable.trainable
    assert float(variable.numpy()) == 0.02 and opt.l21 == 0.02
    assert any(v is variable for v in opt.variables())
    with pytest.raises(KeyError):
        opt.l21_variable(kernel)  # not regularized: no l21


def test_constant_l21_variable_is_the_numpy_reference():
    grads = [(ids, values.astype(np.float64)) for ids, values in _sparse_gradients(8)]
    opt = optim.GroupAdam(0.05, l21=0.3)
    var = tf.Variable(_initial_table().astype(np.float64), name="embeddings")
    for ids, values in grads:
        opt.apply_gradients([(_slices(ids, values), var)])
    expected, _ = ref.group_adam(_initial_table().astype(np.float64), grads, 0.05, l21=0.3)
    np.testing.assert_allclose(var.numpy(), expected, rtol=1e-9, atol=1e-12)
    assert (~np.any(expected != 0, axis=1)).sum() > 0  # l21 zeroed rows


@pytest.mark.parametrize("compiled", [True, False], ids=["xla", "eager"])
def test_changing_l21_between_steps_is_algorithm_1_at_each_steps_l21_without_retracing(compiled):
    """Steps 1-3 at l21 a, then 4-6 at b: the same as the NumPy reference run step by step at a, then b
    (the reference's state carried over); a compiled step is traced once."""
    rng = np.random.RandomState(4)
    grads = [rng.randn(ROWS, DIM) for _ in range(6)]
    lambdas = [0.05, 0.05, 0.05, 0.6, 0.6, 0.6]
    opt = optim.GroupAdam(0.05, l21=lambdas[0], regularize=".")
    var = tf.Variable(_initial_table().astype(np.float64), name="embeddings")

    def step(g):
        opt.apply_gradients([(g, var)])

    if compiled:
        step = tf.function(step, jit_compile=True)
    opt.build([var])
    for g, l21 in zip(grads, lambdas):
        opt.l21_variable(var).assign(l21)
        step(tf.constant(g))
    if compiled:
        assert step.experimental_get_tracing_count() == 1
    expected = _reference_with_changing_l21(_initial_table().astype(np.float64), grads, 0.05, lambdas)
    np.testing.assert_allclose(var.numpy(), expected, rtol=1e-9, atol=1e-12)
    assert np.all(var.numpy()[np.linalg.norm(expected, axis=1) == 0] == 0)
    assert (np.linalg.norm(expected, axis=1) == 0).sum() > 0  # the stronger l21 zeroed rows


def _reference_with_changing_l21(w0, grads, lr, lambdas, beta_1=0.9, beta_2=0.999, eps=1e-7):
    """tests/optim/numpy_reference.group_adam with a per-step l21 (the same recursion)."""
    w = w0.copy()
    m, v, z = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    d = w.shape[1]
    for t, (g, l21) in enumerate(zip(grads, lambdas), start=1):
        m_new = m + (g - m) * (1 - beta_1)
        v_new = v + (g * g - v) * (1 - beta_2)
        alpha = lr * np.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        d_old = np.where(z == 0, 0.0, np.sqrt(v) + eps)
        d_new = np.sqrt(v_new) + eps
        z = z + alpha * m_new - (d_new - d_old) * w
        s = -z
        norm = np.linalg.norm(s, axis=1, keepdims=True)
        thr = l21 * lr * np.sqrt(d)
        scale = np.where(norm > thr, 1 - thr / np.where(norm > thr, norm, 1), 0.0)
        w = s * scale / d_new
        m, v = m_new, v_new
    return w


def test_l21_variable_is_saved_and_restored_with_the_optimizer(tmp_path):
    opt = optim.GroupAdam(0.05, l21=0.01)
    var = tf.Variable(_initial_table(), name="embeddings")
    opt.apply_gradients([(_slices(*_sparse_gradients(1)[0]), var)])
    opt.l21_variable(var).assign(0.25)
    path = tf.train.Checkpoint(optimizer=opt).save(str(tmp_path / "ckpt"))
    other = optim.GroupAdam(0.05, l21=0.01)
    other.build([var])
    tf.train.Checkpoint(optimizer=other).restore(path)
    assert float(other.l21_variable(var).numpy()) == 0.25


# --- critical lambdas and the order statistic ------------------------------------------------------


def test_critical_l21_is_where_the_step_zeroes_the_row():
    rng = np.random.RandomState(0)
    z = rng.randn(50, DIM)
    scale = 0.05
    critical = sc.critical_l21(z, l1=0.0, scale=scale)
    for l21 in (0.5 * np.median(critical), np.median(critical), 2 * np.median(critical)):
        w = optim.group_lasso_solve(tf.constant(z), tf.ones_like(tf.constant(z)), 0.0, 0.0,
                                    l21 * math.sqrt(DIM) * scale).numpy()
        zero = ~np.any(w != 0, axis=1)
        np.testing.assert_array_equal(zero, critical <= l21 * (1 + 1e-12))


def test_critical_l21_with_l1_and_unstepped_rows():
    z = np.array([[0.0, 0.0], [0.3, -0.4], [0.05, 0.01]])
    critical = sc.critical_l21(z, l1=0.1, scale=1.0)
    assert critical[0] == 0.0
    assert critical[1] == pytest.approx(math.hypot(0.2, 0.3) / math.sqrt(2))
    assert critical[2] == 0.0  # l1 zeroes it whatever l21


def test_l21_for_budget_keeps_exactly_the_budget():
    rng = np.random.RandomState(1)
    tables = [rng.lognormal(size=300), rng.lognormal(size=100)]
    for keep in (0, 1, 37, 250, 400):
        l21 = sc.l21_for_budget(tables, [1.0, 1.0], keep)
        kept = sum(int((t > l21).sum()) for t in tables)
        assert kept == keep and l21 >= 0
    # bytes: rows of the second table weigh 4x
    l21 = sc.l21_for_budget(tables, [32, 128], 32 * 100 + 128 * 20)
    kept_bytes = 32 * (tables[0] > l21).sum() + 128 * (tables[1] > l21).sum()
    assert kept_bytes <= 32 * 100 + 128 * 20 and kept_bytes > 32 * 100 + 128 * 20 - 128
    # rows kept whatever l21 count against the budget; no room: every decided row goes
    assert sc.l21_for_budget(tables, [1, 1], 10, fixed_kept=20) > max(t.max() for t in tables)
    assert sc.l21_for_budget([np.zeros(5)], [1], 2) == 0.0


def test_targets_are_checked():
    with pytest.raises(ValueError):
        sc.Target(sparsity=1.0)
    with pytest.raises(ValueError):
        sc.Target(sparsity=0.5, max_bytes=10)
    with pytest.raises(ValueError):
        sc.Target(max_bytes=-1)
    with pytest.raises(ValueError):
        sc.Controller(sc.Target(sparsity=0.5), -1e-3)


# --- the controller on a planted problem -------------------------------------------------------------


class PlantedTable:
    """A table under Algorithm 1's pruning rule, with lazy rows: every step a random tenth of the rows
    is in the batch; their duals move (signal rows drift away from 0, noise rows random-walk) and they
    are re-solved at the l21 of that step: zero iff their critical lambda is at most l21."""

    def __init__(self, seed, rows=2000, signal=0.15, dim=8):
        self.rng = np.random.RandomState(seed)
        self.rows, self.dim = rows, dim
        self.drift = np.where(self.rng.rand(rows) < signal, self.rng.lognormal(0, 0.5, rows), 0.0)
        self.z = np.zeros((rows, dim))
        self.zero = np.zeros(rows, bool)  # starts random: non-zero
        self.direction = self.rng.randn(rows, dim)
        self.direction /= np.linalg.norm(self.direction, axis=1, keepdims=True)

    def step(self, l21):
        touched = self.rng.rand(self.rows) < 0.1
        n = int(touched.sum())
        noise = self.rng.randn(n, self.dim) * 0.02
        self.z[touched] += noise + 0.004 * self.drift[touched, None] * self.direction[touched]
        critical = sc.critical_l21(self.z[touched], scale=0.05)
        self.zero[touched] = critical <= l21

    def state(self):
        stepped = np.any(self.z != 0, axis=1)
        return sc.TableState(sc.critical_l21(self.z[stepped], scale=0.05), int(self.zero.sum()), self.rows,
                             self.dim * 4, int((~stepped & ~self.zero).sum()))


def _simulate(target, seed=0, steps=1500, interval=10, l21=1e-3, settings=None):
    table = PlantedTable(seed)
    controller = sc.Controller(target, l21, settings)
    lambdas = []
    for t in range(1, steps + 1):
        table.step(controller.l21)
        lambdas.append(controller.l21)
        if t % interval == 0:
            controller.update([table.state()], t / steps, t)
    return table, controller, lambdas


@pytest.mark.parametrize("target", [0.5, 0.8, 0.95])
def test_controller_reaches_a_target_sparsity_and_holds_it(target):
    table, controller, lambdas = _simulate(sc.Target(sparsity=target))
    assert abs(table.zero.mean() - target) <= 0.02
    # held through the last 30% of training, not only at the end
    late = [h["sparsity"] for h in controller.history if h["progress"] >= 0.7]
    assert max(abs(s - target) for s in late) <= 0.03
    assert min(lambdas) >= 0


def test_release_keeps_rows_out_early_and_opens_the_whole_budget_by_release_end():
    target = 0.8
    _, released, _ = _simulate(sc.Target(sparsity=target), settings=sc.ControllerSettings(release=1.0, release_end=0.7))
    _, at_once, _ = _simulate(sc.Target(sparsity=target), settings=sc.ControllerSettings(release=0.0))
    def sparsity_at(controller, lo, hi):
        return np.mean([h["sparsity"] for h in controller.history if lo <= h["progress"] < hi])
    # a third of the way in, only about half of the kept rows' budget is open
    assert sparsity_at(released, 0.2, 0.3) >= 1 - (1 - target) * 0.45
    assert abs(sparsity_at(at_once, 0.2, 0.3) - target) <= 0.03
    # both end at the target
    for controller in (released, at_once):
        assert abs(controller.history[-1]["sparsity"] - target) <= 0.02
    assert sc.ControllerSettings().release > 0  # the default releases


def test_controller_meets_a_byte_budget():
    budget = 2000 * 8 * 4 * 0.3
    table, _, _ = _simulate(sc.Target(max_bytes=budget))
    kept = (~table.zero).sum() * 8 * 4
    assert abs(kept / budget - 1) <= 0.02


def test_controller_never_makes_l21_negative_even_from_zero_or_a_huge_start():
    for start in (0.0, 1e3):
        _, controller, lambdas = _simulate(sc.Target(sparsity=0.3), steps=400, l21=start)
        assert min(lambdas) >= 0 and all(h["l21"] >= 0 for h in controller.history)
    # a target the table already beats with l21 = 0: l21 goes to 0, not below
    controller = sc.Controller(sc.Target(sparsity=0.1), 0.01)
    state = sc.TableState(np.zeros(100), zero=100, rows=100, row_bytes=32)
    for _ in range(30):
        assert controller.update([state], 0.1) >= 0
    assert controller.l21 == 0.0


def test_controller_is_deterministic_for_a_seed():
    a = _simulate(sc.Target(sparsity=0.8), seed=3, steps=600)[1].history
    b = _simulate(sc.Target(sparsity=0.8), seed=3, steps=600)[1].history
    c = _simulate(sc.Target(sparsity=0.8), seed=4, steps=600)[1].history
    assert a == b
    assert a != c


def test_controller_moves_l21_by_at_most_max_step_per_update():
    controller = sc.Controller(sc.Target(sparsity=0.9), 1e-3, sc.ControllerSettings(max_step=2.0))
    state = sc.TableState(np.linspace(0.1, 1.0, 100), zero=0, rows=100, row_bytes=32)
    previous = controller.l21
    for _ in range(5):
        new = controller.update([state], 0.1)
        assert previous / 2.0 - 1e-15 <= new <= previous * 2.0 + 1e-15
        previous = new
