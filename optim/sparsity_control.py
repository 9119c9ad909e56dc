"""Choosing l21 for a target: the group-lasso strength that gives a wanted row sparsity or size.

Pure numpy, no Keras: `components.sparsity_target` reads the optimizer's tables and duals every few
steps and calls these; the tests run them on planted problems.

Why it can be exact. Algorithm 1 (`optim.group_step`) makes a row zero at its step exactly when
||s|| <= l21 * sqrt(d) * scale, with s = clip(z, -l1*scale, l1*scale) - z from the row's dual z
(scale: the learning rate where the optimizer folds it into the lambdas, else 1). z does not depend
on l21 directly (only through the weights the model trained with), so each row has a *critical
lambda* c = ||s|| / (sqrt(d) * scale): at the row's next step it is zero for l21 >= c and kept
for l21 < c. Given the critical lambdas of all rows, the l21 that leaves a given number of rows (or
bytes of rows) non-zero is an order statistic of them (`l21_for_budget`).

What it cannot see. z moves while training (noise rows' duals grow like a random walk, signal
rows' like a drift), and a row keeps its weights until the batch next holds it (lazy steps), so the
table's measured sparsity lags what l21 implies now. `Controller` therefore recomputes that
l21 at every control point (tracking the drift) and corrects it with a slow multiplicative term
on the measured error (the lag), bounded per step so that l21 moves smoothly, never below 0.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Sequence

import numpy as np


def critical_l21(z: np.ndarray, l1: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """Per row of a dual accumulator z ([rows, ...]): the l21 at and above which the row's next step
    makes it exactly zero, ||clip(z, -l1*scale, l1*scale) - z|| / (sqrt(d) * scale).

    A row whose z is all zero (never stepped) gets 0.
    """
    z = np.asarray(z, dtype=np.float64)
    rows = z.reshape(z.shape[0], -1) if z.ndim > 1 else z.reshape(-1, 1)
    d = rows.shape[1]
    threshold = l1 * scale
    s = np.clip(rows, -threshold, threshold) - rows
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return np.sqrt(np.sum(s * s, axis=1)) / (math.sqrt(d) * scale)


def l21_for_budget(critical: Sequence[np.ndarray], row_weights: Sequence[float], budget: float,
                   fixed_kept: float = 0.0) -> float:
    """The smallest l21 >= 0 at which the kept rows weigh at most `budget`.

    Args:
      critical: per table, the critical lambdas of its rows that l21 decides (`critical_l21`).
      row_weights: per table, what one kept row of it weighs (1 to count rows, bytes to count bytes).
      budget: the weight the kept rows may have in all.
      fixed_kept: the weight of rows kept whatever l21 is (never stepped, yet non-zero).

    A row is kept when its critical lambda is above l21. The answer lies halfway (geometrically)
    between the critical lambda of the last row it zeroes and the next one, so that float rounding in
    the step does not flip either; when every row fits, it is 0; when none does, just above the
    largest critical lambda.
    """
    parts = [(np.asarray(c, np.float64), float(w)) for c, w in zip(critical, row_weights) if np.size(c)]
    room = budget - fixed_kept
    if not parts:
        return 0.0
    values = np.concatenate([c for c, _ in parts])
    weights = np.concatenate([np.full(c.shape, w) for c, w in parts])
    order = np.argsort(-values, kind="stable")
    values, weights = values[order], weights[order]
    kept = np.cumsum(weights)
    # Keep the k largest: the most whose weight fits (rows tied at the boundary all go).
    k = int(np.searchsorted(kept, room, side="right"))
    if k >= len(values):
        return 0.0
    lowest_zeroed = values[k]
    if k == 0:
        return float(lowest_zeroed * 1.001) if lowest_zeroed > 0 else 0.0
    # Rows tied with the first zeroed row are zeroed too: the kept ones are those strictly above.
    highest_kept = values[k - 1]
    if highest_kept <= lowest_zeroed:  # a tie across the boundary: zero the tie
        return float(lowest_zeroed)
    if lowest_zeroed <= 0:
        return float(highest_kept * 1e-3)
    return float(math.sqrt(lowest_zeroed * highest_kept))


@dataclasses.dataclass
class Target:
    """What one group of tables (sharing one l21) must reach: a sparsity or a byte budget."""
    sparsity: Optional[float] = None       # fraction of the group's rows that are zero
    max_bytes: Optional[float] = None      # bytes of the group's non-zero rows

    def __post_init__(self):
        if (self.sparsity is None) == (self.max_bytes is None):
            raise ValueError("a target is either a sparsity or a byte budget, not both or none")
        if self.sparsity is not None and not 0.0 < self.sparsity < 1.0:
            raise ValueError(f"target sparsity must be in (0, 1), got {self.sparsity}")
        if self.max_bytes is not None and not self.max_bytes >= 0:
            raise ValueError(f"byte budget must be >= 0, got {self.max_bytes}")

    def budget(self, rows: int, row_weight_total: float) -> float:
        """The weight the group's kept rows may have (rows for a sparsity, bytes for a budget)."""
        if self.sparsity is not None:
            return (1.0 - self.sparsity) * rows
        return float(self.max_bytes)

    def describe(self) -> str:
        return f"sparsity {self.sparsity:g}" if self.sparsity is not None else f"{self.max_bytes:.0f} bytes"


@dataclasses.dataclass
class TableState:
    """One table at a control point: the critical lambdas of its stepped rows and what is fixed."""
    critical: np.ndarray   # critical lambdas of the rows l21 decides (stepped at least once)
    zero: int              # rows measured zero in the table now
    rows: int
    row_bytes: int         # bytes of one row (width * itemsize)
    fixed_kept: int = 0    # rows never stepped and non-zero: kept whatever l21 is


@dataclasses.dataclass
class ControllerSettings:
    """How `Controller` moves l21.

    gain: the multiplicative correction's integral gain per control point, on the log ratio of the
      measured kept weight to the budget.
    max_step: the most l21 may change at one control point (a factor, both ways).
    settle: from this fraction of training on the correction stops integrating and l21 moves only
      with the duals (the order statistic). Default 1.0: it never stops. On the planted problem of
      tests/optim/test_sparsity_control.py (target 0.7, 4 seeds) freezing it at 0.8 left the end
      0.021 off the target at worst, integrating to the end 0.004 (gain 0.1; 0.3: 0.006; 0: a bias of
      -0.009, the tables' lag; 1.0 oscillates). The order statistic alone already holds the zero set
      steady late in training, where the duals move slowly.
    release, release_end: how the budget of kept rows (or bytes) opens while training: at progress p
      it is the target's budget times min(1, p / release_end) ** release (0: the whole budget from the
      start). Keeping the first rows out until their duals have shown more than early noise is what a
      fixed l21 does (its zero set shrinks as the duals grow); choosing the final top rows by the
      duals of the first steps fixes noise in. Measured (benchmarks/results/sparsity_target_release.txt,
      10 seeds, test AUC at target 0.95; (release, release_end)): Avazu 0.6589 with (0, -), 0.6659
      with (0.5, 0.7), 0.6736 with (1, 0.7), 0.6742 with (1, 1); Criteo 0.7136, 0.7102, 0.7087 (fixed
      l21 at that sparsity, sparsity_target.txt: Avazu 0.6654, Criteo 0.7076). Avazu's byte budget
      (fixed 0.6868): 0.6940, 0.6904, 0.6887, 0.6832, every seed within 2.0%, 2.0%, 0.7%, 0.7% of it.
      Opening fully at 0.7 leaves the last 30% of training for the controller to settle and the rows
      let in last to train. For a cold start: after a warm start that carried the duals the Trainer
      opens the whole budget at once (release 0).
    """
    gain: float = 0.1
    max_step: float = 2.0
    settle: float = 1.0
    release: float = 1.0
    release_end: float = 0.7


class Controller:
    """Moves one group's l21 to its target while training (deterministic: no randomness at all).

    At each control point: l21* = `l21_for_budget` of the duals now for the budget open at this
    progress (`ControllerSettings.release`; the whole budget from `release_end` on), times
    exp(correction), where the correction integrates the log ratio of
    the measured kept weight to the budget (the tables' lag behind the duals); the result is limited to
    a factor `max_step` from the current l21 and is never negative.
    """

    def __init__(self, target: Target, l21: float, settings: Optional[ControllerSettings] = None):
        if l21 < 0 or not math.isfinite(l21):
            raise ValueError(f"l21 must be a finite number >= 0, got {l21}")
        self.target, self.l21 = target, float(l21)
        self.settings = settings or ControllerSettings()
        self.correction = 0.0
        self.history: List[Dict[str, float]] = []

    def measured(self, tables: Sequence[TableState]) -> Dict[str, float]:
        rows = sum(t.rows for t in tables)
        zero = sum(t.zero for t in tables)
        kept_bytes = sum((t.rows - t.zero) * t.row_bytes for t in tables)
        return {"rows": rows, "zero_rows": zero, "sparsity": zero / rows if rows else 0.0,
                "kept_bytes": kept_bytes}

    def _weights(self, tables: Sequence[TableState]) -> List[float]:
        return [1.0 if self.target.sparsity is not None else float(t.row_bytes) for t in tables]

    def error(self, tables: Sequence[TableState]) -> float:
        """Measured minus target: sparsity (fraction) or kept bytes relative to the budget."""
        m = self.measured(tables)
        if self.target.sparsity is not None:
            return m["sparsity"] - self.target.sparsity
        return (m["kept_bytes"] - self.target.max_bytes) / max(self.target.max_bytes, 1.0)

    def update(self, tables: Sequence[TableState], progress: float, step: int = 0) -> float:
        """The new l21 for the group after a control point at `progress` (0..1) of training."""
        weights = self._weights(tables)
        rows = sum(t.rows for t in tables)
        budget = self.target.budget(rows, 0.0)
        budget *= min(1.0, max(progress, 1e-3) / self.settings.release_end) ** self.settings.release
        fixed = sum(t.fixed_kept * w for t, w in zip(tables, weights))
        wanted = l21_for_budget([t.critical for t in tables], weights, budget, fixed)
        m = self.measured(tables)
        kept = m["kept_bytes"] if self.target.sparsity is None else rows - m["zero_rows"]
        if progress < self.settings.settle and wanted > 0:
            # Too many rows kept -> raise l21 (log ratio > 0), and the other way round.
            ratio = math.log(max(kept, 0.5) / max(budget, 0.5))
            self.correction = float(np.clip(self.correction + self.settings.gain * ratio, -3.0, 3.0))
        proposal = wanted * math.exp(self.correction)
        if self.l21 > 0 and proposal > 0:
            proposal = min(max(proposal, self.l21 / self.settings.max_step), self.l21 * self.settings.max_step)
        new = max(0.0, float(proposal)) if math.isfinite(proposal) else self.l21
        self.history.append({"step": int(step), "progress": round(float(progress), 4), "l21": new,
                             "l21_wanted": wanted, "sparsity": m["sparsity"], "kept_bytes": m["kept_bytes"]})
        self.l21 = new
        return new
