"""Embedding tables partitioned into row shards (`ShardedVariable`, e.g. across parameter servers).

Under `tf.distribute.ParameterServerStrategy` with a variable partitioner, a table of R rows becomes
a `ShardedVariable` of N shards, each a plain variable on its own parameter server holding a
contiguous block of rows ("div" partitioning: the first R mod N shards one row longer). A model's
`trainable_weights` lists the shards; the lookup (`tf.nn.embedding_lookup`) splits the ids by shard,
so the gradient of each shard is an `IndexedSlices` with the shard's own row numbers. The Group
optimizers need nothing special for it: the sparse step is row-wise (a group is a row), so a step on
each shard's rows is the step on the table's rows -- only the rows present in the batch are gathered
and scattered, on the parameter server that owns them, duplicate ids summed per shard (every copy of
an id lands on the same shard), and each slot (m, v, z) is built per shard, colocated with it
(`tf_keras`'s `add_variable_from_reference`).

What does need care is everything that reads or writes a table as a whole -- the sparsity report,
the warm-start state, the non-finite check: these helpers go shard by shard (never concatenating a
table in one process) and name a table by its logical name (``embedding_C1/embeddings``, not
``.../part_0``), so that a state saved from N shards restores into M shards or into one variable.
"""

import re

import numpy as np

_PART = re.compile(r"/part_(\d+)$")


def is_sharded(variable) -> bool:
    """Whether `variable` is a ShardedVariable (a container of row shards)."""
    return bool(getattr(variable, "is_sharded_variable", False)) and hasattr(variable, "_var_offsets")


def shards(variable):
    """The row shards of a ShardedVariable, or [variable] for any other variable."""
    return list(variable.variables) if is_sharded(variable) else [variable]


def row_offsets(variable):
    """First row of each shard of `variable` ([0] for an unsharded one)."""
    if not is_sharded(variable):
        return [0]
    return [int(offset[0]) for offset in variable._var_offsets]


def base_name(name: str) -> str:
    """A variable name without ":0" and without a trailing "/part_<k>" (its shard suffix)."""
    return _PART.sub("", name.split(":")[0])


def name(variable) -> str:
    """The logical name of a (possibly sharded) variable: its first shard's name, suffix removed."""
    return base_name(shards(variable)[0].name)


def container(variable):
    """The ShardedVariable a shard belongs to, or None."""
    ref = getattr(variable, "_sharded_container", None)
    return ref() if ref is not None else None


def logical(variables):
    """`variables` with the shards of each ShardedVariable replaced by the ShardedVariable (once,
    where its first shard was); other variables as they are. ShardedVariables given as such stay."""
    out, seen = [], set()
    for variable in variables:
        whole = container(variable) or variable
        if id(whole) in seen:
            continue
        seen.add(id(whole))
        out.append(whole)
    return out


def flatten(variables):
    """Every shard of every variable (a ShardedVariable contributes its shards)."""
    return [shard for variable in variables for shard in shards(variable)]


def zero_rows(variable) -> int:
    """Rows of a (possibly sharded) table whose entries are all exactly zero, one shard at a time."""
    total = 0
    for shard in shards(variable):
        value = np.asarray(shard.numpy() if hasattr(shard, "numpy") else shard)
        if value.ndim == 0:
            total += int(value == 0)
            continue
        flat = value.reshape(value.shape[0], -1)
        total += int(value.shape[0] - np.count_nonzero(np.any(flat != 0, axis=1)))
    return total


def assign_rows(variable, rows, values) -> None:
    """variable[rows] = values for a (possibly sharded) table, one read-modify-write per shard that
    holds any of `rows` (int array); no shard is concatenated with another."""
    rows = np.asarray(rows, np.int64)
    values = np.asarray(values)
    offsets = row_offsets(variable) + [int(variable.shape[0])]
    for k, shard in enumerate(shards(variable)):
        inside = (rows >= offsets[k]) & (rows < offsets[k + 1])
        if not inside.any():
            continue
        value = shard.numpy()
        value[rows[inside] - offsets[k]] = values[inside]
        shard.assign(value)


def checkpoint_slices(variable):
    """(shard, shape_and_slice) pairs that write a (possibly sharded) variable into one checkpoint
    entry: each shard as a slice of the full tensor ("" for an unsharded variable), so the entry
    reads back whole (`tf.train.load_checkpoint`) and restores into any sharding."""
    if not is_sharded(variable):
        return [(variable, "")]
    full = [int(d) for d in variable.shape]
    out = []
    for shard, offset in zip(shards(variable), row_offsets(variable)):
        length = int(shard.shape[0])
        extent = [f"{offset},{length}"] + ["-"] * (len(full) - 1)
        out.append((shard, " ".join(str(d) for d in full) + " " + ":".join(extent)))
    return out
