"""Group Adam, Group Adagrad, Group Momentum and Group AMSGrad as tf_keras (Keras 2) optimizers.

Yue et al., "Adaptive Optimizers with Sparse Group Lasso for Neural Networks in CTR Prediction",
ECML PKDD 2021, arXiv 2107.14432. The math lives in `optim.group_step`; `GroupOptimizer` wires it to
Keras variables, and each optimizer class only says what its moments (m_t, V_t) and slots are.

Which variables are regularized: by default those whose gradient arrives as `tf.IndexedSlices`
(embedding tables), plus those whose name matches the `regularize` regex. Every other variable gets
the vanilla optimizer (no regularizers, no dual slot), as in the reference implementation.
"""

import math
import re

import tensorflow as tf
import tf_keras
from tensorflow.python.ops import control_flow_util

from optim import group_step as gs

# Rows per block of the compiled sparse step (`group_step.for_each_block`): each block is one
# gather -> math -> scatter over `_BLOCK_ROWS` rows; a batch with u distinct ids takes ceil(u / it)
# blocks. On CPU (26,624 ids, 3,936 distinct, 16 wide) the step took the same time with blocks of
# 256 to 4096 rows.
_BLOCK_ROWS = 512


def _non_negative(name, value):
    if value is None or float(value) < 0:
        raise ValueError(f"`{name}` must be a number >= 0. Received: {name}={value!r}")
    return float(value)


def _in_xla_context():
    """Whether the op being traced will be compiled by XLA (a tf.function(jit_compile=True) here or
    around it, e.g. Keras's compiled train step or tf_keras's own `_update_step_xla`)."""
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _can_jit_compile():
    try:
        from tf_keras.src.utils import tf_utils
    except ImportError:  # pragma: no cover - another tf_keras layout
        return True
    return tf_utils.can_jit_compile()


def _looks_like_embedding(variable):
    # Only used when build() runs before any gradient was seen (e.g. an explicit
    # optimizer.build(model.trainable_variables)): Keras Embedding layers name their table
    # ".../embeddings" (".../embeddings/part_<k>" for a shard of a table split over parameter servers).
    return re.sub(r"/part_\d+$", "", variable.name.split(":")[0]).split("/")[-1] == "embeddings"


def _gather_rows(variable, ids):
    """variable[ids], reading only those rows where the variable lives (ResourceGather).

    tf.gather does that for a plain variable (its sparse_read). A mirrored variable (slots under
    MirroredStrategy / MultiWorkerMirroredStrategy, inside the strategy's update of one device's
    copy) has no sparse_read, and tf.gather would first read the whole table: O(table) per step.
    Its `handle` there is the local copy's."""
    if isinstance(variable, tf.distribute.DistributedValues):
        return tf.raw_ops.ResourceGather(resource=variable.handle, indices=ids, dtype=variable.dtype)
    return tf.gather(variable, ids)


def _scatter_rows(variable, ids, rows):
    """variable[ids] = rows, written where the variable lives; for a mirrored variable (as in
    `_gather_rows`) its local copy's, without reading the whole variable back."""
    if isinstance(variable, tf.distribute.DistributedValues):
        return tf.raw_ops.ResourceScatterUpdate(resource=variable.handle, indices=ids, updates=rows)
    return variable.scatter_update(tf.IndexedSlices(rows, ids))


def _join(parts, rank):
    """Parts of a row_state (each shaped like its variable, or like rows of it) side by side along
    axis 1 (axis 0 for a scalar variable's)."""
    return tf.stack(parts, axis=1 if rank else 0)


def _under_parameter_servers():
    """Whether the step runs under ParameterServerStrategy: a table shard, its slots and the step
    counter then live on different tasks, which one XLA computation cannot reach (optim.sharded)."""
    return isinstance(tf.distribute.get_strategy(), tf.distribute.ParameterServerStrategy)


class _Untracked:
    """Holds a value on an optimizer without Keras/TF tracking it (a dict of variables would be
    saved with the optimizer, and one keyed by ints cannot be)."""

    def __init__(self, value):
        self.value = value


class GroupOptimizer(tf_keras.optimizers.Optimizer):
    """Base class: Algorithm 1 of the paper on regularized variables, the vanilla step on the others.

    Subclasses define `_slot_names` (and, if not zeros, `_slot_initial_value`), `_moments` (the new
    m_t, V_t from the gradient), `_increment` and `_denominator` (such that the vanilla step is
    w -= increment / denominator), and `_regularizer_scale` (lr when the learning rate is folded into
    z, 1 when it is not).

    Args:
      learning_rate: float or `tf_keras.optimizers.schedules.LearningRateSchedule`.
      l1: coordinate-wise lasso strength (>= 0).
      l2: ridge strength (>= 0).
      l21: group-lasso strength (>= 0); a row (group of d coordinates) is pruned to exactly zero when
        the norm of its soft-thresholded dual is at most l21 * sqrt(d) (times lr where folded).
      regularize: optional regex; variables whose name matches it are regularized too (their whole
        value is stepped each time, rows are the groups). By default only variables whose gradient is
        a `tf.IndexedSlices` are, and only the rows present in the batch are touched (lazy).
      **kwargs: the tf_keras `Optimizer` arguments (name, clipnorm, jit_compile, ...). tf_keras
        compiles its update steps with XLA only on GPUs; these optimizers also compile the step of a
        sparse (IndexedSlices) gradient on other devices (`jit_compile=True`, the default), where it
        is faster than uncompiled (benchmarks/optim_step.py). `jit_compile=False` runs it
        uncompiled (tf.unique).

    Reference: Yue et al., "Adaptive Optimizers with Sparse Group Lasso for Neural Networks in CTR
    Prediction", ECML PKDD 2021, arXiv 2107.14432.
    """

    _slot_names = ()

    def __init__(self, name, learning_rate, l1, l2, l21, regularize, **kwargs):
        # tf_keras's base default weight_decay=0 would still run variable -= variable*0*lr over every
        # whole table each step; None skips it.
        kwargs.setdefault("weight_decay", None)
        # tf_keras turns its jit_compile off without a GPU (and get_config reports what it turned it
        # to); the sparse Group step is compiled on any device unless the caller said False.
        self._jit_compile_requested = bool(kwargs.get("jit_compile", True))
        super().__init__(name=name, **kwargs)
        self._compile_sparse_step = self._jit_compile_requested and _can_jit_compile()
        self._learning_rate = self._build_learning_rate(learning_rate)
        self.l1 = _non_negative("l1", l1)
        self.l2 = _non_negative("l2", l2)
        self.l21 = _non_negative("l21", l21)
        self.regularize = regularize
        self._regularize_pattern = re.compile(regularize) if regularize else None
        # Keys of variables whose gradient came as IndexedSlices on the first apply_gradients call
        # (None until then): build() needs them to know which variables get a dual slot.
        self._sparse_gradient_keys = None

    # --- what the subclasses define -------------------------------------------------------------

    def _slot_initial_value(self, slot_name, variable):
        return None  # zeros

    def _moments(self, gradient, state, hyper):
        raise NotImplementedError

    def _increment(self, state, gradient, hyper):
        raise NotImplementedError

    def _denominator(self, state, hyper):
        raise NotImplementedError

    def _regularizer_scale(self, hyper):
        return hyper["lr"]

    def _hyperparameters(self, dtype):
        return {"lr": tf.cast(self.learning_rate, dtype)}

    # --- building ---------------------------------------------------------------------------------

    def is_regularized(self, variable):
        """Whether this (built) optimizer applies the sparse group lasso to `variable`."""
        return self._var_key(variable) in getattr(self, "_state_index", {})

    def _should_regularize(self, variable):
        if self._regularize_pattern is not None and self._regularize_pattern.search(variable.name):
            return True
        if self._sparse_gradient_keys is None:
            return _looks_like_embedding(variable)
        return self._var_key(variable) in self._sparse_gradient_keys

    def build(self, var_list):
        super().build(var_list)
        if getattr(self, "_built", False):
            return
        self._built = True
        # A regularized variable's moments and dual z live side by side in one slot, "row_state"
        # (`row_state_names` along its axis 1): a step reads and writes each of its rows once, not once
        # per slot (benchmarks/slot_layout.py). Other variables get one slot per moment, as in tf_keras.
        self._slot_variables = {name: [] for name in self._slot_names}
        self._row_states = []
        self._state_index = {}
        for variable in var_list:
            regularized = self._should_regularize(variable)
            if regularized:
                self._state_index[self._var_key(variable)] = len(self._row_states)
                self._row_states.append(self._add_row_state(variable))
            for name in self._slot_names:
                self._slot_variables[name].append(None if regularized else self.add_variable_from_reference(
                    variable, name, initial_value=self._slot_initial_value(name, variable)))
        # The group-lasso strength of each regularized variable (`l21_variable`).
        self._l21_variables = [self._add_l21_variable(v) for v in var_list if self.is_regularized(v)]

    @property
    def row_state_names(self):
        """The per-row state of a regularized variable, in its row_state slot's order: the moments,
        then the dual accumulator z."""
        return tuple(self._slot_names) + ("z",)

    def _add_row_state(self, variable):
        names = self.row_state_names
        shape = [int(variable.shape[0]), len(names)] + [int(d) for d in variable.shape[1:]] if (
            variable.shape.rank) else [len(names)]
        initial = [self._slot_initial_value(name, variable) for name in self._slot_names]
        if all(value is None for value in initial):
            return self.add_variable_from_reference(variable, "row_state", shape=shape)
        zeros = tf.zeros(variable.shape, variable.dtype)
        return self.add_variable_from_reference(variable, "row_state", initial_value=_join(
            [zeros if value is None else value for value in initial] + [zeros], variable.shape.rank))

    def row_state(self, variable):
        """The slot holding the per-row state of regularized `variable` ([rows, len(row_state_names),
        ...]: each row's moments and dual side by side); `split_row_state` names its parts."""
        return self._row_states[self._state_index[self._var_key(variable)]]

    def split_row_state(self, value, rank):
        """{name: part} of a value of a row_state slot (a tensor or a NumPy array), or of rows of it, for
        a variable of rank `rank`."""
        names = self.row_state_names
        if isinstance(value, tf.Tensor):
            # One Unpack instead of a strided slice per part: each part is a strided copy out of the
            # interleaved rows, which one op does faster on CPU than three.
            return dict(zip(names, tf.unstack(value, num=len(names), axis=1 if rank else 0)))
        return {name: value[:, i] if rank else value[i] for i, name in enumerate(names)}

    def _add_l21_variable(self, variable):
        # A scalar optimizer variable, read inside the (compiled) step: it may change between steps
        # (optim.sparsity_control sets it while training) without a retrace, and it is saved and
        # restored with the other optimizer variables. float64, so that l21 * sqrt(d) is the same
        # arithmetic as with a Python float l21 (the step's threshold bit for bit).
        name = getattr(variable, "_shared_name", None) or variable.name.split(":")[0]
        l21 = tf.Variable(self.l21, dtype=tf.float64, trainable=False, name=f"l21/{name}")
        self._variables.append(l21)
        return l21

    def l21_variable(self, variable):
        """The scalar l21 variable of a regularized `variable` of this built optimizer.

        Starts at the constructor's `l21`; assign to it to change the strength of that variable's
        group lasso from the next step on (Algorithm 1 at the new lambda: z keeps its meaning).
        """
        return self._l21_variables[self._state_index[self._var_key(variable)]]

    def apply_gradients(self, grads_and_vars, name=None, skip_gradients_aggregation=False, **kwargs):
        grads_and_vars = list(grads_and_vars)
        if not getattr(self, "_built", False) and self._sparse_gradient_keys is None:
            self._sparse_gradient_keys = {
                self._var_key(variable)
                for gradient, variable in grads_and_vars
                if isinstance(gradient, tf.IndexedSlices)
            }
        return super().apply_gradients(
            grads_and_vars, name=name, skip_gradients_aggregation=skip_gradients_aggregation, **kwargs
        )

    def _deduplicate_sparse_grad(self, grads):
        # tf_keras sums duplicate ids with tf.unique before the step (dynamic shapes under XLA, 44 ms
        # on CPU); update_step finds the distinct ids itself (_sparse_group_update).
        return list(grads)

    def _compiles_apart(self, gradient, variable):
        """Whether the sparse Group step of this pair runs as its own XLA computation: it is not
        compiled already (inside a compiled train step) and compiling was not turned off."""
        return (
            self._compile_sparse_step
            and isinstance(gradient, tf.IndexedSlices)
            and self.is_regularized(variable)
            and not _in_xla_context()
            and getattr(variable, "_unique_id", None) is not None
            and not _under_parameter_servers()
        )

    def _update_step(self, gradient, variable):
        # tf_keras calls this when its jit_compile is off (always without a GPU). The sparse Group
        # step goes through tf_keras's own compiled wrapper (_update_step_xla, what tf_keras uses on
        # GPUs) unless it is compiled already or compiling was turned off.
        if self._compiles_apart(gradient, variable):
            return self._update_step_xla(gradient, variable, id(self._var_key(variable)))
        return super()._update_step(gradient, variable)

    def _distributed_apply_gradients_fn(self, distribution, grads_and_vars, **kwargs):
        # The sparse steps of all the tables together: compiled, one XLA computation (one launch per
        # training step instead of one per table); uncompiled, one dedupe and one row math over the
        # rows of all the tables of a width (`_sparse_group_update_tables`: a third of the ops of a
        # step per table). Only for plain variables on one device: a strategy's update of mirrored
        # copies, or of shards on parameter servers, goes variable by variable.
        grads_and_vars = list(grads_and_vars)
        if distribution.num_replicas_in_sync != 1 or _under_parameter_servers():
            return super()._distributed_apply_gradients_fn(distribution, grads_and_vars, **kwargs)
        sparse = [
            (gradient, variable) for gradient, variable in grads_and_vars
            if isinstance(gradient, tf.IndexedSlices)
            and self.is_regularized(variable)
            and getattr(variable, "_unique_id", None) is not None
            and not isinstance(variable, tf.distribute.DistributedValues)
        ]
        compiled = [pair for pair in sparse if self._compiles_apart(*pair)]
        if len(compiled) > 1:
            gradients, variables = zip(*compiled)
            # The variables by key, captured inside (as arguments, tf.function would hand the trace
            # stand-ins that the optimizer does not know).
            self._compiled_together = _Untracked({id(self._var_key(v)): v for v in variables})
            self._sparse_steps_xla(list(gradients), tuple(self._compiled_together.value))
            done = {id(v) for v in variables}
        elif not compiled:  # uncompiled, or compiled already (inside a compiled train step)
            done = self._step_tables_together(sparse)
        else:
            done = set()
        grads_and_vars = [(g, v) for g, v in grads_and_vars if id(v) not in done]
        return super()._distributed_apply_gradients_fn(distribution, grads_and_vars, **kwargs)

    def _step_tables_together(self, pairs):
        """Steps the tables of `pairs` that share a dtype and row shape with another one together
        (`_sparse_group_update_tables`); returns the ids of the variables it stepped."""
        by_kind = {}
        for gradient, variable in pairs:
            by_kind.setdefault((variable.dtype, tuple(variable.shape[1:])), []).append((gradient, variable))
        done = set()
        for together in by_kind.values():
            if len(together) > 1:
                self._sparse_group_update_tables(together)
                done.update(id(v) for _, v in together)
        return done

    @tf.function(jit_compile=True)
    def _sparse_steps_xla(self, gradients, keys):
        # `keys` (the variables' ids, a Python tuple) make a trace per set of variables.
        variables = [self._compiled_together.value[key] for key in keys]
        done = self._step_tables_together(list(zip(gradients, variables)))
        for gradient, variable in zip(gradients, variables):
            if id(variable) not in done:
                self.update_step(gradient, variable)

    # --- the step -----------------------------------------------------------------------------------

    # Only Python control flow, decided at trace time: autograph has nothing to convert here, and
    # skipping it saves re-parsing this module's source for every traced step.
    @tf.autograph.experimental.do_not_convert
    def update_step(self, gradient, variable):
        hyper = self._hyperparameters(variable.dtype)
        if not self.is_regularized(variable):
            self._vanilla_update(gradient, variable, self._slots(variable), hyper)
        elif isinstance(gradient, tf.IndexedSlices):
            self._sparse_group_update(gradient, variable, hyper)
        else:
            self._dense_group_update(gradient, variable, hyper)

    def _slots(self, variable):
        """{slot name: slot variable} of a variable that is not regularized."""
        index = self._index_dict[self._var_key(variable)]
        return {name: self._slot_variables[name][index] for name in self._slot_names}

    def _vanilla_update(self, gradient, variable, slots, hyper):
        gradient = tf.convert_to_tensor(gradient)  # sums duplicate ids of a stray IndexedSlices
        old = {name: slot.read_value() for name, slot in slots.items()}
        new = self._moments(gradient, old, hyper)
        for name, slot in slots.items():
            slot.assign(new[name])
        variable.assign_sub(self._increment(new, gradient, hyper) / self._denominator(new, hyper))

    def _group_threshold(self, variable, hyper, l21=None):
        """The group-lasso threshold of `variable`'s rows: l21 * sqrt(row size), times lr where folded
        (`l21`: that of several tables of `variable`'s row shape, stacked)."""
        l21 = self.l21_variable(variable) if l21 is None else l21
        return tf.cast(
            l21 * math.sqrt(gs.group_size(variable.shape)), variable.dtype
        ) * self._regularizer_scale(hyper)

    def _group_rows(self, gradient, w, z, old, hyper, variable, group_threshold=None):
        """Algorithm 1 on rows of `variable` (or of several tables of its dtype and row shape, with
        `group_threshold` per row); returns (new weights, new z, new moments)."""
        new = self._moments(gradient, old, hyper)
        scale = self._regularizer_scale(hyper)
        dtype = variable.dtype
        w_new, z_new = gs.group_lasso_step(
            w,
            z,
            self._increment(new, gradient, hyper),
            self._denominator(old, hyper),
            self._denominator(new, hyper),
            l1=tf.cast(self.l1, dtype) * scale,
            l2=tf.cast(self.l2, dtype) * scale,
            group_threshold=(self._group_threshold(variable, hyper) if group_threshold is None
                             else group_threshold),
        )
        return w_new, z_new, new

    def _dense_group_update(self, gradient, variable, hyper):
        state = self.row_state(variable)
        rank = variable.shape.rank
        old = self.split_row_state(state.read_value(), rank)
        w_new, z_new, new = self._group_rows(gradient, variable.read_value(), old["z"], old, hyper, variable)
        state.assign(self._joined_state(new, z_new, rank))
        variable.assign(w_new)

    def _joined_state(self, moments, z, rank):
        return _join([moments[name] for name in self._slot_names] + [z], rank)

    def _update_rows(self, variable, ids, rows_gradient, hyper):
        """The group step on rows `ids` of a regularized `variable` (gather -> step -> scatter), given
        each row's summed gradient; an id twice must come with the same gradient row twice."""
        state = self.row_state(variable)
        rank = variable.shape.rank
        old = self.split_row_state(_gather_rows(state, ids), rank)
        w_new, z_new, new = self._group_rows(
            rows_gradient, _gather_rows(variable, ids), old["z"], old, hyper, variable
        )
        _scatter_rows(state, ids, self._joined_state(new, z_new, rank))
        _scatter_rows(variable, ids, w_new)

    def _sparse_group_update(self, gradient, variable, hyper):
        # Only the rows of the batch are read and written (gather -> group step -> scatter),
        # duplicate ids summed first; rows not in the batch keep w, z and moments bit for bit.
        def update_rows(ids, rows_gradient):
            self._update_rows(variable, ids, rows_gradient, hyper)

        if not _in_xla_context():
            # Uncompiled: tf.unique's hash table, then the step on exactly the distinct rows.
            update_rows(*gs.unique_rows(gradient.values, gradient.indices))
            return
        indices, values = gradient.indices, gradient.values

        def by_position():
            # A short id list (one field of one batch): the step on every position, each copy of an
            # id with its id's total (`totals_per_position`).
            update_rows(indices, gs.totals_per_position(values, indices))

        def by_distinct_rows():
            # Static shapes: the distinct ids first, padded to the batch's length, then the step in
            # blocks of static size over only the first `count` of them.
            ids, totals, count = gs.unique_rows_padded(values, indices)
            block = max(1, min(_BLOCK_ROWS, length)) if length is not None else tf.maximum(
                1, tf.minimum(_BLOCK_ROWS, tf.shape(indices)[0]))
            gs.for_each_block(
                count, block, lambda positions: update_rows(
                    tf.gather(ids, positions), tf.gather(totals, positions)
                )
            )

        length = indices.shape[0]
        if length is not None and length <= _BLOCK_ROWS:
            by_position()
        elif length is not None:
            by_distinct_rows()
        else:
            # Keras traces its train step with the batch dimension unknown: no branch on the length
            # (a tf.cond compiles both sides, the block loop's ~0.4 s a table). Every position,
            # first positions by hashing (O(n) at any length).
            update_rows(indices, gs.totals_per_position(values, indices, pairs=False))

    def _sparse_group_update_tables(self, pairs):
        """The sparse step of several tables of one dtype and row shape at once.

        The ids of all the tables, told apart by table (id * tables + table), are deduplicated
        together. Uncompiled: one tf.unique, each table's distinct rows gathered, the row math once
        over all of them (each row with its table's l21), each table's rows scattered back: a third of
        the ops of a step per table (26 tables). Compiled: one hashing loop (`first_positions`) gives
        every position its id's total, then each table steps its positions (`_update_rows`): one loop
        to compile instead of one per table; the row math stays per table, where XLA on CPU ran the
        concatenated rows' math slower. Every row gets exactly the arithmetic of
        `_sparse_group_update` on its own table (its gradient rows summed in the same order).
        """
        gradients, variables = zip(*pairs)
        tables = len(variables)
        dtype = variables[0].dtype
        keys = tf.concat([tf.cast(g.indices, tf.int64) * tables + t for t, g in enumerate(gradients)], 0)
        values = tf.concat([g.values for g in gradients], 0)
        hyper = self._hyperparameters(dtype)
        if _in_xla_context():
            totals = gs.totals_per_position(values, keys, pairs=False)
            parts = tf.split(totals, [tf.shape(g.indices)[0] for g in gradients])
            for gradient, variable, part in zip(gradients, variables, parts):
                self._update_rows(variable, gradient.indices, part, hyper)
            return
        unique_keys, position_row = tf.unique(keys)
        totals = tf.math.unsorted_segment_sum(values, position_row, tf.shape(unique_keys)[0])
        # tf.unique keeps the order of first occurrences, and `keys` lists the tables one after
        # another: the distinct rows come grouped by table already, in table order.
        table_of_row = tf.cast(unique_keys % tables, tf.int32)
        counts = tf.math.bincount(table_of_row, minlength=tables, maxlength=tables)
        ids = tf.split(unique_keys // tables, counts, num=tables)
        states = [self.row_state(v) for v in variables]
        rank = variables[0].shape.rank

        def gathered(tables_):
            return tf.concat([_gather_rows(v, i) for v, i in zip(tables_, ids)], 0)

        # Each table's group threshold repeated over its rows.
        l21 = tf.stack([self.l21_variable(v) for v in variables])
        threshold = tf.gather(self._group_threshold(variables[0], hyper, l21=l21), table_of_row)
        threshold = tf.reshape(threshold, [-1] + [1] * (variables[0].shape.rank - 1))
        old = self.split_row_state(gathered(states), rank)
        w_new, z_new, new = self._group_rows(
            totals, gathered(variables), old["z"], old, hyper, variables[0], group_threshold=threshold,
        )
        for tables_, rows in ((states, self._joined_state(new, z_new, rank)), (variables, w_new)):
            for variable, table_ids, part in zip(tables_, ids, tf.split(rows, counts, num=tables)):
                _scatter_rows(variable, table_ids, part)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "learning_rate": self._serialize_hyperparameter(self._learning_rate),
                "l1": self.l1,
                "l2": self.l2,
                "l21": self.l21,
                "regularize": self.regularize,
                "jit_compile": self._jit_compile_requested,
            }
        )
        return config


@tf_keras.saving.register_keras_serializable(package="sparsectr")
class GroupAdam(GroupOptimizer):
    """Group Adam: Adam with sparse group lasso (l1, l2, l21) on embedding rows.

    m_t = beta1*m + (1-beta1)*g, V_t = beta2*v + (1-beta2)*g^2, alpha_t = lr_t*sqrt(1-beta2^t)/(1-beta1^t);
    z += alpha_t*m_t - (D_t - D_{t-1})*w with D = sqrt(V) + epsilon, lambdas scaled by lr_t. With all
    lambdas 0 it is tf_keras Adam (epsilon-hat form) exactly, under any learning-rate schedule, except
    that embedding rows are updated lazily (only rows in the batch).

    Args:
      learning_rate: float or schedule (default 0.001).
      beta_1, beta_2: moment decay rates (0.9, 0.999).
      epsilon: added to sqrt(V) (1e-7).
      l1, l2, l21: lasso, ridge and group-lasso strengths (>= 0, default 0).
      regularize: optional regex of extra variable names to regularize.
      amsgrad: use max(V_{t-1}, v_t) as V_t (Group AMSGrad).
      **kwargs: tf_keras Optimizer arguments.

    Reference: Yue et al., "Adaptive Optimizers with Sparse Group Lasso for Neural Networks in CTR
    Prediction", ECML PKDD 2021, arXiv 2107.14432.
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        l1=0.0,
        l2=0.0,
        l21=0.0,
        regularize=None,
        amsgrad=False,
        name="GroupAdam",
        **kwargs,
    ):
        super().__init__(name, learning_rate, l1, l2, l21, regularize, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = _non_negative("epsilon", epsilon)
        self.amsgrad = bool(amsgrad)
        self._slot_names = ("m", "v", "vhat") if self.amsgrad else ("m", "v")

    def _hyperparameters(self, dtype):
        lr = tf.cast(self.learning_rate, dtype)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        return {
            "lr": lr,
            # The moments decay with (1 - beta) taken from the Python floats, the bias correction
            # with beta cast to the variable's dtype, both exactly as tf_keras Adam does. tf.cast of
            # a Python float goes through float32, so 1 - tf.cast(0.999) is 1.3e-5 (relative) off
            # 0.001; using the cast beta for the moments too (as this did first) made every step
            # ~6e-6 (relative) off tf_keras's: 8e-6 apart after 100 steps at lr 0.05, in float32
            # and float64 alike.
            "one_minus_beta_1": 1.0 - self.beta_1,
            "one_minus_beta_2": 1.0 - self.beta_2,
            "alpha": gs.adam_step_size(lr, beta_1, beta_2, step),
            "epsilon": tf.cast(self.epsilon, dtype),
        }

    def _moments(self, gradient, state, hyper):
        m, v = gs.adam_moments(
            state["m"], state["v"], gradient, hyper["one_minus_beta_1"], hyper["one_minus_beta_2"]
        )
        if self.amsgrad:
            return {"m": m, "v": v, "vhat": tf.maximum(state["vhat"], v)}
        return {"m": m, "v": v}

    def _increment(self, state, gradient, hyper):
        return state["m"] * hyper["alpha"]

    def _denominator(self, state, hyper):
        return tf.sqrt(state["vhat" if self.amsgrad else "v"]) + hyper["epsilon"]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "amsgrad": self.amsgrad,
            }
        )
        return config


@tf_keras.saving.register_keras_serializable(package="sparsectr")
class GroupAMSGrad(GroupAdam):
    """Group AMSGrad: Group Adam with V_t = max(V_{t-1}, v_t) (tf_keras Adam(amsgrad=True) at zero lambdas).

    Args: as `GroupAdam` (without `amsgrad`, which is always on).

    Reference: Yue et al., "Adaptive Optimizers with Sparse Group Lasso for Neural Networks in CTR
    Prediction", ECML PKDD 2021, arXiv 2107.14432.
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        l1=0.0,
        l2=0.0,
        l21=0.0,
        regularize=None,
        name="GroupAMSGrad",
        **kwargs,
    ):
        kwargs.pop("amsgrad", None)
        super().__init__(
            learning_rate, beta_1, beta_2, epsilon, l1, l2, l21, regularize, amsgrad=True,
            name=name, **kwargs,
        )


@tf_keras.saving.register_keras_serializable(package="sparsectr")
class GroupAdagrad(GroupOptimizer):
    """Group Adagrad (the reference's Sparse Group FTRL): Adagrad with sparse group lasso.

    n_t = n_{t-1} + g^2 (n_0 = initial_accumulator_value); z += g - (D_t - D_{t-1})*w with
    D = sqrt(n + epsilon)/lr; w = s*(1 - l21*sqrt(d)/||s||)/(D + 2*l2); thresholds are not scaled by lr.
    With all lambdas 0 and a constant learning rate it is tf_keras Adagrad (epsilon inside the square
    root as there; epsilon=0 gives the reference's formula exactly).

    Args:
      learning_rate: float or schedule (default 0.001).
      initial_accumulator_value: starting value of n (0.1).
      epsilon: added to n under the square root (1e-7).
      l1, l2, l21, regularize, **kwargs: as `GroupAdam`.

    Reference: Yue et al., "Adaptive Optimizers with Sparse Group Lasso for Neural Networks in CTR
    Prediction", ECML PKDD 2021, arXiv 2107.14432.
    """

    _slot_names = ("accumulator",)

    def __init__(
        self,
        learning_rate=0.001,
        initial_accumulator_value=0.1,
        epsilon=1e-7,
        l1=0.0,
        l2=0.0,
        l21=0.0,
        regularize=None,
        name="GroupAdagrad",
        **kwargs,
    ):
        super().__init__(name, learning_rate, l1, l2, l21, regularize, **kwargs)
        self.initial_accumulator_value = _non_negative(
            "initial_accumulator_value", initial_accumulator_value
        )
        self.epsilon = _non_negative("epsilon", epsilon)

    def _slot_initial_value(self, slot_name, variable):
        return tf.fill(variable.shape, tf.cast(self.initial_accumulator_value, variable.dtype))

    def _hyperparameters(self, dtype):
        return {"lr": tf.cast(self.learning_rate, dtype), "epsilon": tf.cast(self.epsilon, dtype)}

    def _moments(self, gradient, state, hyper):
        return {"accumulator": gs.adagrad_accumulate(state["accumulator"], gradient)}

    def _increment(self, state, gradient, hyper):
        return gradient

    def _denominator(self, state, hyper):
        return tf.sqrt(state["accumulator"] + hyper["epsilon"]) / hyper["lr"]

    def _regularizer_scale(self, hyper):
        return tf.constant(1.0, hyper["lr"].dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"initial_accumulator_value": self.initial_accumulator_value, "epsilon": self.epsilon}
        )
        return config


@tf_keras.saving.register_keras_serializable(package="sparsectr")
class GroupMomentum(GroupOptimizer):
    """Group Momentum: SGD with momentum and sparse group lasso.

    m_t = momentum*m_{t-1} + lr_t*g_t (the learning rate folded in, as tf_keras SGD), V_t = 1, so D = 1
    and z += m_t - (1 - D_{t-1})*w; lambdas scaled by lr_t. With all lambdas 0 it is tf_keras
    SGD(momentum) exactly, except that embedding rows are updated lazily.

    Args:
      learning_rate: float or schedule (default 0.01).
      momentum: gamma in [0, 1] (0.9).
      l1, l2, l21, regularize, **kwargs: as `GroupAdam`.

    Reference: Yue et al., "Adaptive Optimizers with Sparse Group Lasso for Neural Networks in CTR
    Prediction", ECML PKDD 2021, arXiv 2107.14432.
    """

    _slot_names = ("m",)

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.9,
        l1=0.0,
        l2=0.0,
        l21=0.0,
        regularize=None,
        name="GroupMomentum",
        **kwargs,
    ):
        super().__init__(name, learning_rate, l1, l2, l21, regularize, **kwargs)
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"`momentum` must be in [0, 1]. Received: momentum={momentum!r}")
        self.momentum = float(momentum)

    def _hyperparameters(self, dtype):
        return {"lr": tf.cast(self.learning_rate, dtype), "momentum": tf.cast(self.momentum, dtype)}

    def _moments(self, gradient, state, hyper):
        return {"m": gs.momentum_accumulate(state["m"], gradient, hyper["momentum"], hyper["lr"])}

    def _increment(self, state, gradient, hyper):
        return state["m"]

    def _denominator(self, state, hyper):
        return tf.ones_like(state["m"])

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum})
        return config
