"""Warm start: the Trainer continues from the last pushed model's weights and optimizer state.

After training, the Trainer saves its state beside the exported model, in ``<model>/warm_start/``:

* ``state.index`` / ``state.data-*``: a TF checkpoint bundle (``SaveV2``) of every trainable weight
  and every optimizer variable (slots ``m``, ``v``, the Group optimizers' dual ``z``, the step
  counter), keyed by variable name (``embedding_C1/embeddings``, ``m/embedding_C1/embeddings``, ...);
  a Group optimizer's ``row_state`` slot (m, v and z of a table side by side) is saved as its parts;
* ``vocabulary.txt``: the Transform vocabulary those tables were indexed by (``<field>\\x1f<value>``);
* ``meta.json``: model kind, optimizer, steps, table rows.

The Pusher copies this folder into the pushed version (TF Serving ignores it), so the next scheduled
run's `LatestPushedModel` hands it to the Trainer as ``base_model``. `restore` then copies the rows of
each embedding table -- and the same rows of its slots -- by (field, value): a value in both
vocabularies keeps its learned row, a new value starts fresh (initializer; zero slots), a vanished
value is dropped. Dense weights are restored when their shapes match; optimizer state only when the
optimizer is the same (a Group optimizer's dual ``z`` is only consistent with its own moments).
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from optim import sharded

STATE_DIR = "warm_start"
STATE_PREFIX = "state"
VOCABULARY_FILE = "vocabulary.txt"
META_FILE = "meta.json"
_TABLE = re.compile(r"(?:^|/)embedding_(.+)/embeddings$")
# Optimizer state that a state saved by an older version may lack: the Group optimizers' per-table
# l21 (`GroupOptimizer.l21_variable`, since issue #19). Missing, it keeps the value it starts with.
OPTIONAL_STATE = ("l21/",)


def state_dir(model_root: str) -> str:
    """Where a model's warm-start state lives: beside Format-Serving, or inside a pushed version."""
    return os.path.join(model_root, STATE_DIR)


def _name(variable) -> str:
    # A table sharded over parameter servers (and its slots) by its unsharded name (optim.sharded).
    return sharded.name(variable)


class _PerShard:
    """A scalar that an optimizer keeps once per shard of a sharded table (its shards' copies of one
    logical value): saved once under the table's key, restored into every copy."""

    def __init__(self, variables):
        self.variables = list(variables)
        self.shape, self.dtype = self.variables[0].shape, self.variables[0].dtype

    def read_value(self):
        values = [v.read_value() for v in self.variables]
        if any(not bool(tf.reduce_all(tf.equal(values[0], v))) for v in values[1:]):
            logging.warning("%s differs between the shards of its table; the first shard's is saved",
                            self.variables[0].name)
        return values[0]

    def assign(self, value):
        for v in self.variables:
            v.assign(value)


class _RowStatePart:
    """One part (a moment, or the dual z) of a Group optimizer's row_state slot, read and assigned as a
    variable of its own (`GroupOptimizer.row_state`): the state keeps one entry per part, so states
    saved before the parts shared a slot restore, and a sharded slot is still saved shard by shard."""

    def __init__(self, state, index: int):
        self.state, self.index, self.dtype = state, index, state.dtype
        dims = state.shape.as_list()
        self._axis = 1 if len(dims) > 1 else 0
        self.shape = tf.TensorShape(dims[:self._axis] + dims[self._axis + 1:])
        if sharded.is_sharded(state):
            self.is_sharded_variable = True
            self._var_offsets = state._var_offsets
            self.variables = [_RowStatePart(shard, index) for shard in sharded.shards(state)]

    def read_value(self):
        return tf.gather(self.state.read_value(), self.index, axis=self._axis)

    def numpy(self):
        return self.read_value().numpy()

    def assign(self, value):
        parts = tf.unstack(self.state.read_value(), axis=self._axis)
        parts[self.index] = tf.convert_to_tensor(value, self.dtype)
        self.state.assign(tf.stack(parts, axis=self._axis))


def _state_variables(model, optimizer, with_optimizer: bool = True) -> List[Tuple[str, tf.Variable]]:
    """(key, variable) of every trainable weight and, with_optimizer, every optimizer variable.

    Keys do not depend on where the optimizer was built (inside fit its variables get a name scope,
    "GroupAdam/m/dense/kernel"; built directly, "m/dense/kernel"): a slot is keyed
    ``<slot>/<weight name>``, the step counter ``iteration``. Nor on sharding: a table split over
    parameter servers, and each of its slots, is one entry keyed by its unsharded name.
    """
    weights = [(_name(v), v) for v in sharded.logical(model.trainable_weights)]
    out = list(weights)
    if with_optimizer:
        names = sorted((n for n, _ in weights), key=len, reverse=True)
        keyed: Dict[str, list] = {}
        for variable in sharded.logical(optimizer.variables()):
            name = _name(variable)
            weight = next((n for n in names if name.endswith("/" + n)), None)
            if weight is None:
                keyed.setdefault(name.split("/")[-1], []).append(variable)  # iteration (any scalar state)
                continue
            slot = name[:-len(weight) - 1].split("/")[-1]
            if slot == "row_state":
                for index, part in enumerate(optimizer.row_state_names):
                    keyed.setdefault(f"{part}/{weight}", []).append(_RowStatePart(variable, index))
            else:
                keyed.setdefault(f"{slot}/{weight}", []).append(variable)
        for key, variables in keyed.items():
            out.append((key, variables[0] if len(variables) == 1 else _PerShard(variables)))
    return out


def _entries(pairs):
    """(names, shape_and_slices, tensors) of SaveV2 for (key, variable) pairs: a sharded table as one
    entry written slice by slice (no shard is concatenated with another)."""
    names, slices, tensors = [], [], []
    for key, variable in pairs:
        for part, spec in (sharded.checkpoint_slices(variable) if sharded.is_sharded(variable) else [(variable, "")]):
            names.append(key)
            slices.append(spec)
            tensors.append(part.read_value())
    return names, slices, tensors


def snapshot(prefix: str, model, optimizer) -> None:
    """Writes every weight and optimizer variable (the state `save` keeps) to a checkpoint at `prefix`."""
    names, slices, tensors = _entries(_state_variables(model, optimizer))
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=slices, tensors=tensors)


def restore_snapshot(prefix: str, model, optimizer) -> None:
    """Assigns back what `snapshot` wrote at `prefix` (same model and optimizer, same variables)."""
    targets, names, slices = [], [], []
    for key, variable in _state_variables(model, optimizer):
        for part, spec in (sharded.checkpoint_slices(variable) if sharded.is_sharded(variable) else [(variable, "")]):
            targets.append(part)
            names.append(key)
            slices.append(spec)
    values = tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=names, shape_and_slices=slices,
                                  dtypes=[v.dtype for v in targets])
    for variable, value in zip(targets, values):
        variable.assign(value)


def save(directory: str, model, optimizer, vocabulary_path: Optional[str], meta: Dict[str, Any]) -> int:
    """Write the warm-start state of a trained model to `directory`; returns its size in bytes."""
    tf.io.gfile.makedirs(directory)
    pairs = _state_variables(model, optimizer)
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"variable names are not unique, cannot key a warm-start state by them: {names}")
    entries, slices, tensors = _entries(pairs)
    tf.raw_ops.SaveV2(prefix=os.path.join(directory, STATE_PREFIX), tensor_names=entries,
                      shape_and_slices=slices, tensors=tensors)
    if vocabulary_path:
        tf.io.gfile.copy(vocabulary_path, os.path.join(directory, VOCABULARY_FILE), overwrite=True)
    meta = dict(meta, variables=names, steps=int(optimizer.iterations.numpy()))
    with tf.io.gfile.GFile(os.path.join(directory, META_FILE), "w") as f:
        f.write(json.dumps(meta, indent=1, sort_keys=True))
    return sum(tf.io.gfile.stat(os.path.join(directory, n)).length for n in tf.io.gfile.listdir(directory))


def row_map(field: str, new_vocabulary, old_vocabulary, new_rows: int, old_rows: int
            ) -> Tuple[np.ndarray, np.ndarray, Dict[str, int]]:
    """(new row indices, old row indices, counts) of the rows of `field` carried over.

    Vocabulary fields: rows match by value, then the OOV rows by position. Hash and quantile-bucket
    fields (no vocabulary): rows match by position.
    """
    new_values = new_vocabulary.values.get(field) if new_vocabulary is not None else None
    old_values = old_vocabulary.values.get(field) if old_vocabulary is not None else None
    if new_values is None or old_values is None:
        n = min(new_rows, old_rows)
        return np.arange(n), np.arange(n), {"carried": n, "new": new_rows - n, "dropped": old_rows - n}
    old_index = {value: i for i, value in enumerate(old_values)}
    pairs = [(i, old_index[v]) for i, v in enumerate(new_values) if v in old_index]
    carried = len(pairs)
    oov = min(new_rows - len(new_values), old_rows - len(old_values))
    pairs += [(len(new_values) + k, len(old_values) + k) for k in range(max(oov, 0))]
    new_idx = np.asarray([p[0] for p in pairs], np.int64)
    old_idx = np.asarray([p[1] for p in pairs], np.int64)
    return new_idx, old_idx, {"carried": carried, "new": len(new_values) - carried,
                              "dropped": len(old_values) - carried}


def restore(directory: str, model, optimizer, vocabulary, model_kind: str, optimizer_name: str
            ) -> Dict[str, Any]:
    """Load the state in `directory` into `model` (and `optimizer`); returns what was carried.

    The report has ``restored`` (bool) and, when False, ``reason``. Nothing is assigned unless every
    dense weight matches in shape: a half-restored network would be worse than a fresh one.
    """
    from components.vocabulary import FieldVocabulary

    meta_path = os.path.join(directory, META_FILE)
    if not tf.io.gfile.exists(meta_path):
        return {"restored": False, "source": directory, "reason": f"no warm-start state in {directory}"}
    with tf.io.gfile.GFile(meta_path) as f:
        meta = json.load(f)
    if meta.get("model") != model_kind:
        return {"restored": False, "source": directory,
                "reason": f"pushed model is a {meta.get('model')!r}, this run trains a {model_kind!r}"}
    with_optimizer = meta.get("optimizer") == optimizer_name
    if with_optimizer:
        optimizer.build(model.trainable_variables)  # creates the slots to load into
    reader = tf.train.load_checkpoint(os.path.join(directory, STATE_PREFIX))
    saved = reader.get_variable_to_shape_map()
    vocabulary_file = os.path.join(directory, VOCABULARY_FILE)
    old_vocabulary = (FieldVocabulary(vocabulary.spec, vocabulary_path=vocabulary_file)
                      if tf.io.gfile.exists(vocabulary_file) else None)

    plan, fields = [], {}
    for name, variable in _state_variables(model, optimizer, with_optimizer):
        # Rows of a table (or of its slots); a per-table scalar (an optimizer's hyperparameter) is not.
        table = _TABLE.search(name) if variable.shape.rank else None
        if name not in saved:
            if table:
                continue  # a new field: its table starts fresh
            if name.startswith(OPTIONAL_STATE):
                continue  # saved before it existed (or a new table's): keeps its initial value
            return {"restored": False, "source": directory, "reason": f"{name} is not in the pushed model's state"}
        shape = variable.shape.as_list()
        if table:
            field = table.group(1)
            if shape[1:] != saved[name][1:]:
                return {"restored": False, "source": directory,
                        "reason": f"{name} is {saved[name]} in the pushed model, {shape} now"}
            new_idx, old_idx, counts = row_map(field, vocabulary, old_vocabulary, shape[0], saved[name][0])
            fields.setdefault(field, counts)
            plan.append((variable, name, new_idx, old_idx))
        elif shape != saved[name]:
            return {"restored": False, "source": directory,
                    "reason": f"{name} is {saved[name]} in the pushed model, {shape} now"}
        else:
            plan.append((variable, name, None, None))

    for variable, name, new_idx, old_idx in plan:
        old = reader.get_tensor(name)
        if new_idx is None:
            variable.assign(old)
        elif sharded.is_sharded(variable):  # shard by shard, no shard concatenated with another
            sharded.assign_rows(variable, new_idx, old[old_idx])
        else:
            value = variable.numpy()
            value[new_idx] = old[old_idx]
            variable.assign(value)
    totals = {k: sum(c[k] for c in fields.values()) for k in ("carried", "new", "dropped")}
    return {"restored": True, "source": directory, "optimizer_state": with_optimizer,
            "steps_before": int(meta.get("steps", 0)), "fields": fields,
            "rows_carried": totals["carried"], "rows_new": totals["new"], "rows_dropped": totals["dropped"]}
