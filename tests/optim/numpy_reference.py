"""Row-by-row float64 NumPy transcriptions of the Group optimizers, for the tests.

Written from Algorithm 1 of the paper (arXiv 2107.14432; docs/optim.md "The step") line by line, with an
explicit per-row "seen" flag for the row's own first update, independent of the z == 0 test the
product uses. Each function takes the initial table and a list of sparse gradients (ids, values) and
returns the final table and state.
"""

import numpy as np


def _summed(ids, values):
    """Duplicate ids summed first, in order of first appearance."""
    totals = {}
    for i, row in zip(np.asarray(ids).tolist(), np.asarray(values, np.float64)):
        totals[i] = totals.get(i, 0.0) + row
    return totals


def _shrink(s, threshold, denominator):
    norm = np.linalg.norm(s)
    if norm > threshold:
        return s * (1.0 - threshold / norm) / denominator
    return np.zeros_like(s)


def group_adam(w0, gradients, lr, beta_1=0.9, beta_2=0.999, eps=1e-7, l1=0.0, l2=0.0, l21=0.0,
               amsgrad=False):
    """lr: a float or a list with one learning rate per step."""
    w = np.array(w0, np.float64)
    m, v, vhat, z = (np.zeros_like(w) for _ in range(4))
    seen = np.zeros(len(w), bool)
    d = w.shape[1]
    for t, (ids, values) in enumerate(gradients, start=1):
        lr_t = lr[t - 1] if isinstance(lr, (list, tuple)) else lr
        alpha = lr_t * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        l1p, l2p, thr = l1 * lr_t, l2 * lr_t, l21 * lr_t * np.sqrt(d)
        for r, g in _summed(ids, values).items():
            m[r] = beta_1 * m[r] + (1 - beta_1) * g
            vn = beta_2 * v[r] + (1 - beta_2) * g * g
            if amsgrad:
                # V_t = max(V_{t-1}, v_t): the denominators use vhat in place of v.
                vhn = np.maximum(vhat[r], vn)
                old, new = vhat[r].copy(), vhn
                vhat[r] = vhn
            else:
                old, new = v[r], vn
            z[r] += alpha * m[r] - (np.sqrt(new) - np.sqrt(old)) * w[r]
            if not seen[r]:
                z[r] -= eps * w[r]
            s = np.clip(z[r], -l1p, l1p) - z[r]
            w[r] = _shrink(s, thr, np.sqrt(new) + eps + 2 * l2p)
            v[r] = vn
            seen[r] = True
    return w, {"m": m, "v": v, "z": z}


def group_adagrad(w0, gradients, lr, initial_accumulator_value=0.1, eps=1e-7, l1=0.0, l2=0.0,
                  l21=0.0):
    """z += g - (sqrt(n_new) - sqrt(n))/lr * w, with sqrt(n) read as 0 on the row's first update
    (Algorithm 1's V_0 = 0); epsilon inside the square roots as in tf_keras Adagrad."""
    w = np.array(w0, np.float64)
    n = np.full_like(w, initial_accumulator_value)
    z = np.zeros_like(w)
    seen = np.zeros(len(w), bool)
    thr = l21 * np.sqrt(w.shape[1])
    for ids, values in gradients:
        for r, g in _summed(ids, values).items():
            n_new = n[r] + g * g
            previous = np.sqrt(n[r] + eps) if seen[r] else 0.0
            z[r] += g - (np.sqrt(n_new + eps) - previous) / lr * w[r]
            s = np.clip(z[r], -l1, l1) - z[r]
            w[r] = _shrink(s, thr, np.sqrt(n_new + eps) / lr + 2 * l2)
            n[r] = n_new
            seen[r] = True
    return w, {"accumulator": n, "z": z}


def group_momentum(w0, gradients, lr, momentum=0.9, l1=0.0, l2=0.0, l21=0.0):
    """m = momentum*m + lr*g; V = 1, so z += m - (1 - D_prev)*w with D_prev 0 on the first update."""
    w = np.array(w0, np.float64)
    m = np.zeros_like(w)
    z = np.zeros_like(w)
    seen = np.zeros(len(w), bool)
    l1p, l2p, thr = l1 * lr, l2 * lr, l21 * lr * np.sqrt(w.shape[1])
    for ids, values in gradients:
        for r, g in _summed(ids, values).items():
            m[r] = momentum * m[r] + lr * g
            z[r] += m[r] - (1.0 - (1.0 if seen[r] else 0.0)) * w[r]
            s = np.clip(z[r], -l1p, l1p) - z[r]
            w[r] = _shrink(s, thr, 1.0 + 2 * l2p)
            seen[r] = True
    return w, {"m": m, "z": z}
