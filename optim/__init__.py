"""Sparse-group-lasso adaptive optimizers (Group Adam, Group Adagrad, Group Momentum, Group AMSGrad).

Yue et al., "Adaptive Optimizers with Sparse Group Lasso for Neural Networks in CTR Prediction",
ECML PKDD 2021, arXiv 2107.14432. The math is in `optim.group_step` (pure functions), the tf_keras
optimizers in `optim.optimizers`, the row-sparsity report in `optim.row_sparsity`, the optimizers by
name in `optim.alias` (`optim.create`).
"""

from optim.alias import GROUP_OPTIMIZERS, OPTIMIZERS, create
from optim.group_step import (
    group_lasso_solve,
    group_lasso_step,
    soft_threshold,
    sum_duplicate_rows,
    unique_rows,
    unique_rows_padded,
)
from optim.optimizers import GroupAdagrad, GroupAdam, GroupAMSGrad, GroupMomentum, GroupOptimizer
from optim.row_sparsity import sparsity, zero_rows

__all__ = [
    "create",
    "OPTIMIZERS",
    "GROUP_OPTIMIZERS",
    "GroupAdam",
    "GroupAdagrad",
    "GroupAMSGrad",
    "GroupMomentum",
    "GroupOptimizer",
    "group_lasso_step",
    "group_lasso_solve",
    "soft_threshold",
    "sum_duplicate_rows",
    "unique_rows",
    "unique_rows_padded",
    "sparsity",
    "zero_rows",
]
