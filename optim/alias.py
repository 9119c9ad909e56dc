"""Optimizers by name: the one name -> optimizer table (in the spirit of optax's ``alias.py``).

    optim.create("group_adam", learning_rate=0.005, l21=1e-3)
    optim.create("adam", learning_rate=0.005)            # the dense baseline: tf_keras Adam

The Trainer builds its optimizer with ``create(config.optimizer, ...)``, and so do the benchmarks;
pipelines/config.py keeps the names too (``OPTIMIZERS``, so that reading a config needs no
TensorFlow) and tests/pipelines/test_config.py checks that the two lists agree.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import tf_keras

from optim.optimizers import GroupAdagrad, GroupAdam, GroupAMSGrad, GroupMomentum

# The sparse-group-lasso terms; the dense baseline has none.
REGULARIZERS = ("l1", "l2", "l21")

OPTIMIZERS: Dict[str, Callable[..., tf_keras.optimizers.Optimizer]] = {
    "group_adam": GroupAdam,
    "group_adagrad": GroupAdagrad,
    "group_momentum": GroupMomentum,
    "group_amsgrad": GroupAMSGrad,
    "adam": tf_keras.optimizers.Adam,
}
GROUP_OPTIMIZERS: Tuple[str, ...] = tuple(name for name in OPTIMIZERS if name.startswith("group_"))


def create(name: str, **hparams) -> tf_keras.optimizers.Optimizer:
    """The optimizer called `name` with `hparams` (its constructor's arguments).

    A trainer config carries l1/l2/l21 and jit_compile whatever its optimizer: for the dense "adam"
    they are dropped (it has no regularization terms, and keeps tf_keras' own jit_compile default),
    as the Trainer always did.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} not in {sorted(OPTIMIZERS)}")
    if name not in GROUP_OPTIMIZERS:
        hparams = {k: v for k, v in hparams.items() if k not in REGULARIZERS + ("jit_compile",)}
    return OPTIMIZERS[name](**hparams)
