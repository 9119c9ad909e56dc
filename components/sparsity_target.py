"""The Trainer's sparsity and size targets: a Keras callback that sets l21 while the model trains.

Config (`trainer:`): ``target_sparsity`` (fraction of embedding rows that are zero) or
``max_embedding_bytes`` (bytes of the non-zero rows: rows x width x 4, what the pruned export's
tables hold), and per table ``target_sparsity_per_table`` / ``max_embedding_bytes_per_table``. A table
named per table gets its own l21; the others share one l21 and reach the global target together.
Tables under no target keep the config's ``l21``.

Every `interval` steps `SparsityTarget` reads each table and its dual z from the Group optimizer,
asks `optim.sparsity_control.Controller` for the group's new l21, and assigns it to the optimizer's
l21 variables of those tables (`GroupOptimizer.l21_variable`), which the compiled step reads: no
retracing, and Algorithm 1 stays exact at whatever l21 holds at each step.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from optim.sparsity_control import Controller, ControllerSettings, TableState, Target, critical_l21

GLOBAL = "*"  # the group of the tables without their own target
# On target: reached sparsity within this of the target, or kept bytes at most this fraction over.
SPARSITY_TOLERANCE = 0.02
BYTES_TOLERANCE = 0.02


def targets(cfg: Dict[str, Any]) -> Dict[str, Target]:
    """group name (a field, or GLOBAL) -> Target of a trainer config; {} when no target is set."""
    out: Dict[str, Target] = {}
    if cfg.get("target_sparsity") is not None:
        out[GLOBAL] = Target(sparsity=float(cfg["target_sparsity"]))
    if cfg.get("max_embedding_bytes") is not None:
        if GLOBAL in out:
            raise ValueError("trainer: target_sparsity and max_embedding_bytes both set; choose one")
        out[GLOBAL] = Target(max_bytes=float(cfg["max_embedding_bytes"]))
    for field, value in (cfg.get("target_sparsity_per_table") or {}).items():
        out[field] = Target(sparsity=float(value))
    for field, value in (cfg.get("max_embedding_bytes_per_table") or {}).items():
        if field in out:
            raise ValueError(f"trainer: table {field} has both a target sparsity and a byte budget")
        out[field] = Target(max_bytes=float(value))
    return out


def _parts(table) -> List[tf.Variable]:
    """The variables a table is stored in: its shards for a ShardedVariable, else itself."""
    from tensorflow.python.distribute.sharded_variable import ShardedVariable
    return list(table.variables) if isinstance(table, ShardedVariable) else [table]


def _numpy(variable) -> np.ndarray:
    return np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable)


class _Variables:
    """A fixed list of variables read, or assigned one value, by one function call.

    An eager read or assign costs ~0.2 ms of dispatch per variable, and a control point reads every
    table and its dual and assigns every table's l21 (26 tables in the demo, a control point every 2
    steps). Variables of a distribution strategy (mirrored copies, shards on parameter servers) are
    read and assigned one by one, as the strategy does it eagerly."""

    def __init__(self, variables: List[Any]):
        from optim.optimizers import _under_parameter_servers
        self.variables = list(variables)
        self._one_call = not _under_parameter_servers() and not any(
            isinstance(v, tf.distribute.DistributedValues) for v in self.variables)
        if self._one_call:
            self._read = tf.function(lambda: [v.read_value() for v in self.variables], autograph=False)
            self._assign = tf.function(self._assign_each, autograph=False)

    def _assign_each(self, value):
        for v in self.variables:
            v.assign(tf.cast(value, v.dtype))

    def values(self) -> List[np.ndarray]:
        if self._one_call:
            return [t.numpy() for t in self._read()]
        return [_numpy(v) for v in self.variables]

    def assign(self, value: float) -> None:
        if self._one_call:
            self._assign(tf.constant(value, tf.float64))
            return
        for v in self.variables:
            v.assign(value)


def on_target(target: Target, sparsity: float, kept_bytes: float) -> bool:
    if target.sparsity is not None:
        return abs(sparsity - target.sparsity) <= SPARSITY_TOLERANCE
    return kept_bytes <= target.max_bytes * (1.0 + BYTES_TOLERANCE)


class SparsityTarget(keras.callbacks.Callback):
    """Adjusts the Group optimizer's l21 every `interval` steps to reach the config's targets.

    Args:
      groups: group name -> Target (`targets(cfg)`).
      total_steps: the steps fit will run, if known (else learned after the first epoch).
      interval: steps between control points (None: ~1% of the steps, at most 50, 10 while unknown).
      log_dir: TensorBoard folder for l21, target and reached sparsity and bytes per control point.
      settings: `ControllerSettings`.
    """

    def __init__(self, groups: Dict[str, Target], total_steps: Optional[int] = None,
                 interval: Optional[int] = None, log_dir: Optional[str] = None,
                 settings: Optional[ControllerSettings] = None):
        super().__init__()
        if not groups:
            raise ValueError("SparsityTarget needs at least one target")
        self.groups, self.total_steps, self.fixed_interval = dict(groups), total_steps, interval
        self.settings = settings or ControllerSettings()
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "sparsity_target")) if log_dir else None
        self.controllers: Dict[str, Controller] = {}
        self.members: Dict[str, List[str]] = {}
        self.steps = 0
        self._steps_before_epoch = 0
        self.steps_in_first_epoch: Optional[int] = None
        self.epochs = 1
        self.start_l21: Dict[str, float] = {}
        self._variables: Dict[Any, _Variables] = {}  # the tables and duals of a group, its l21 variables

    # -- set-up ------------------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self.epochs = int((self.params or {}).get("epochs") or 1)
        if self.total_steps is None and (self.params or {}).get("steps"):
            self.total_steps = int(self.params["steps"]) * self.epochs
        self.steps = self._steps_before_epoch = 0

    def _tables(self) -> Dict[str, Any]:
        from components import models
        return models.embedding_tables(self.model)

    def _setup(self):
        tables = self._tables()
        unknown = sorted(set(self.groups) - {GLOBAL} - set(tables))
        if unknown:
            raise ValueError(f"trainer: per-table target for {', '.join(unknown)}: no such embedding table "
                             f"(tables: {', '.join(sorted(tables))})")
        optimizer = self.model.optimizer
        if not hasattr(optimizer, "l21_variable"):
            raise ValueError("trainer: a sparsity or size target needs a Group optimizer (l21), not "
                             f"{type(optimizer).__name__}")
        named = set(self.groups) - {GLOBAL}
        for name in self.groups:
            fields = [f for f in sorted(tables) if (f == name if name != GLOBAL else f not in named)]
            if not fields:
                continue
            self.members[name] = fields
            start = float(optimizer.l21_variable(_parts(tables[fields[0]])[0]).numpy())
            self.start_l21[name] = start
            self.controllers[name] = Controller(self.groups[name], start, self.settings)

    # -- control -----------------------------------------------------------------------------------
    def interval(self) -> int:
        if self.fixed_interval:
            return int(self.fixed_interval)
        if not self.total_steps:
            return 10
        return int(min(50, max(1, self.total_steps // 100)))

    def progress(self) -> float:
        if self.total_steps:
            return min(1.0, self.steps / self.total_steps)
        return 0.0  # first epoch of unknown length

    def max_steps_per_execution(self) -> int:
        """The most training steps per call into TensorFlow (`training.StepsPerExecution`): control
        acts between calls, so no more than one interval."""
        return self.interval()

    def on_epoch_begin(self, epoch, logs=None):
        self._steps_before_epoch = self.steps

    def on_epoch_end(self, epoch, logs=None):
        if self.total_steps is None and self.steps_in_first_epoch is None:
            self.steps_in_first_epoch = self.steps
            self.total_steps = self.steps * self.epochs

    def on_train_batch_end(self, batch, logs=None):
        # `batch` is the epoch's last batch so far: a call into TensorFlow may run several steps.
        steps = self._steps_before_epoch + batch + 1
        interval = self.interval()
        passed_a_control_point = steps // interval > self.steps // interval
        self.steps = steps
        if passed_a_control_point:
            self.control()

    def table_states(self, fields: List[str]) -> List[TableState]:
        """Each table's state now. The regularizer scale is one per dtype (it moves with the step, not
        the table), so it is computed once here: its eager ops once per table and control point were
        a quarter of the demo's Trainer fit (benchmarks/trainer_run_bench.py, `per_table_control`)."""
        optimizer = self.model.optimizer
        tables = self._tables()
        key = ("tables", tuple(fields))
        if key not in self._variables:
            parts = [part for field in fields for part in _parts(tables[field])]
            states = [optimizer.row_state(part) for part in parts]
            self._variables[key] = _Variables([v for pair in zip(parts, states) for v in pair])
        values = iter(self._variables[key].values())
        scales: Dict[Any, float] = {}
        states = []
        for field in fields:
            critical, zero, rows, fixed = [], 0, 0, 0
            row_bytes = 0
            for part in _parts(tables[field]):
                w = next(values)
                z = optimizer.split_row_state(next(values), w.ndim)["z"]
                flat_w, flat_z = w.reshape(w.shape[0], -1), z.reshape(z.shape[0], -1)
                nonzero = np.any(flat_w != 0, axis=1)
                stepped = np.any(flat_z != 0, axis=1)
                if part.dtype not in scales:
                    hyper = optimizer._hyperparameters(part.dtype)
                    scales[part.dtype] = float(np.asarray(optimizer._regularizer_scale(hyper)))
                critical.append(critical_l21(flat_z[stepped], optimizer.l1, scales[part.dtype]))
                zero += int(np.count_nonzero(~nonzero))
                rows += w.shape[0]
                fixed += int(np.count_nonzero(nonzero & ~stepped))
                row_bytes = flat_w.shape[1] * w.dtype.itemsize
            states.append(TableState(np.concatenate(critical) if critical else np.zeros(0), zero, rows, row_bytes,
                                     fixed))
        return states

    def control(self) -> None:
        if not self.controllers:
            if not getattr(self.model.optimizer, "_built", False):
                return
            self._setup()
        tables = self._tables()
        optimizer = self.model.optimizer
        progress = self.progress()
        for name, controller in self.controllers.items():
            states = self.table_states(self.members[name])
            l21 = controller.update(states, progress, self.steps)
            key = ("l21", name)
            if key not in self._variables:
                self._variables[key] = _Variables([optimizer.l21_variable(part) for field in self.members[name]
                                                   for part in _parts(tables[field])])
            self._variables[key].assign(l21)
            if self.writer is not None:
                m = controller.history[-1]
                with self.writer.as_default(step=int(optimizer.iterations.numpy())):
                    label = "all" if name == GLOBAL else name
                    tf.summary.scalar(f"l21/{label}", l21)
                    tf.summary.scalar(f"reached_sparsity/{label}", m["sparsity"])
                    tf.summary.scalar(f"reached_bytes/{label}", m["kept_bytes"])
                    target = controller.target
                    tf.summary.scalar(f"target/{label}", target.sparsity if target.sparsity is not None
                                      else target.max_bytes)

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.flush()

    # -- results -----------------------------------------------------------------------------------
    def reached(self) -> Dict[str, Dict[str, Any]]:
        """Per group: the target, the tables, the reached sparsity and bytes of the tables now, l21."""
        if not self.controllers and getattr(self.model.optimizer, "_built", False):
            self._setup()
        out = {}
        for name, controller in self.controllers.items():
            m = controller.measured(self.table_states(self.members[name]))
            target = controller.target
            out[name] = {"target_sparsity": target.sparsity, "max_embedding_bytes": target.max_bytes,
                         "tables": self.members[name], "rows": m["rows"], "zero_rows": m["zero_rows"],
                         "reached_sparsity": round(m["sparsity"], 6), "reached_bytes": int(m["kept_bytes"]),
                         "on_target": on_target(target, m["sparsity"], m["kept_bytes"]),
                         "l21_start": self.start_l21[name], "l21": self._l21(name)}
        return out

    def _l21(self, name: str) -> float:
        """The group's l21 as the optimizer holds it (a restored best epoch's, say)."""
        table = self._tables()[self.members[name][0]]
        return float(self.model.optimizer.l21_variable(_parts(table)[0]).numpy())

    def on_target(self) -> bool:
        """Whether every group is within tolerance of its target now."""
        return all(g["on_target"] for g in self.reached().values())

    def report(self, max_points: int = 60) -> Dict[str, Any]:
        """training.json's `sparsity_target`: per group the result and the l21 trajectory."""
        out = {"groups": self.reached(), "interval": self.interval(), "steps": self.steps,
               "settings": dataclasses.asdict(self.settings)}
        for name, controller in self.controllers.items():
            points = controller.history
            if len(points) > max_points:
                keep = np.unique(np.linspace(0, len(points) - 1, max_points).round().astype(int))
                points = [points[i] for i in keep]
            out["groups"][name]["trajectory"] = [
                {"step": p["step"], "l21": float(f"{p['l21']:.6g}"), "sparsity": round(p["sparsity"], 4),
                 "kept_bytes": int(p["kept_bytes"])} for p in points]
        return out


def weight_bytes(model) -> Dict[str, Any]:
    """Bytes of the non-zero embedding rows (per table and in all: rows x width x itemsize, what the
    pruned export's tables hold), of the other weights (`dense_bytes`) and of both (`model_bytes`)."""
    from components import models
    per_table, ids = {}, set()
    for field, table in models.embedding_tables(model).items():
        kept = 0
        for part in _parts(table):
            w = _numpy(part)
            flat = w.reshape(w.shape[0], -1)
            kept += int(np.count_nonzero(np.any(flat != 0, axis=1))) * flat.shape[1] * w.dtype.itemsize
            ids.add(id(part))
        per_table[field] = kept
        ids.add(id(table))
    dense = sum(int(np.prod(v.shape)) * v.dtype.size for v in model.weights if id(v) not in ids)
    embedding = sum(per_table.values())
    return {"embedding_bytes": embedding, "embedding_bytes_per_table": per_table, "dense_bytes": int(dense),
            "model_bytes": int(embedding + dense)}


def describe(groups: Dict[str, Target]) -> str:
    return ", ".join(f"{'all tables' if n == GLOBAL else n}: {t.describe()}" for n, t in sorted(groups.items()))
