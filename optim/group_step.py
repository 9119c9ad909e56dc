"""The math of the Group optimizers as small pure functions on tensors (no state, no Keras).

Yue et al., "Adaptive Optimizers with Sparse Group Lasso for Neural Networks in CTR Prediction",
ECML PKDD 2021, arXiv 2107.14432, Algorithm 1. Every Group optimizer keeps, per regularized coordinate,
a dual accumulator z next to its own moments, and takes the same closed-form step:

    z_t     = z_{t-1} + increment_t - (D_t - D_{t-1}) * w_t
    s       = clip(z_t, -l1, l1) - z_t
    w_{t+1} = s * max(1 - group_threshold / ||s||_2, 0) / (D_t + 2 * l2)      (per group = per row)

where D_t is the optimizer's denominator (sqrt(V_t) / alpha_t in the paper's notation; e.g.
sqrt(v_t) + epsilon for Group Adam, whose learning rate is folded into the increment and the lambdas).
A group is a row: a slice along the first axis, so for an embedding table one (field, value) feature.
With l1 = l2 = group_threshold = 0 the recursion telescopes to w_{t+1} = w_t - increment_t / D_t, the
vanilla optimizer's step, from any starting weights.
"""

import tensorflow as tf


def soft_threshold(x, threshold):
    """sign(x) * max(|x| - threshold, 0), written as x - clip(x) so that threshold 0 is exactly x."""
    return x - tf.clip_by_value(x, -threshold, threshold)


def group_size(shape):
    """Number of coordinates in one group (one row) of a variable of this static shape."""
    size = 1
    for dim in list(shape)[1:]:
        size *= int(dim)
    return size


def group_norm(x):
    """L2 norm of each row of x (over every axis but the first), kept broadcastable against x.

    A rank-0 or rank-1 tensor is a column of single-coordinate groups, whose norm is |x|.
    """
    rank = x.shape.rank
    if rank is None or rank <= 1:
        return tf.abs(x)
    return tf.sqrt(tf.reduce_sum(tf.square(x), axis=list(range(1, rank)), keepdims=True))


def group_lasso_solve(z, denominator, l1, l2, group_threshold):
    """The closed-form row update of Algorithm 1: the new weights given the dual accumulator z.

    Args:
      z: dual accumulator, shape [rows, ...].
      denominator: D_t, broadcastable to z (per coordinate for Adam, a scalar for Momentum).
      l1, l2: the (already scaled) coordinate-wise lasso and ridge strengths.
      group_threshold: the (already scaled) group-lasso threshold, l21 * sqrt(group size).

    Returns:
      w = s * max(1 - group_threshold / ||s||, 0) / (denominator + 2 * l2), s = clip(z, -l1, l1) - z;
      a row whose ||s|| <= group_threshold is exactly zero (pruned).
    """
    s = -soft_threshold(z, l1)
    norm = group_norm(s)
    keep = norm > group_threshold
    # The where() on the norm keeps 0/0 out of the graph: a pruned or all-zero row gets scale 0, and
    # a zero threshold gives scale exactly 1, so zero lambdas reproduce the vanilla step bit for bit.
    safe_norm = tf.where(keep, norm, tf.ones_like(norm))
    scale = tf.where(keep, 1.0 - group_threshold / safe_norm, tf.zeros_like(norm))
    return s * scale / (denominator + 2.0 * l2)


def dual_update(z, w, increment, denominator_old, denominator_new):
    """z_t = z_{t-1} + increment - (D_t - D_{t-1}) * w_t, with D_{t-1} = 0 where z is still 0.

    Algorithm 1 starts from V_0 = 0, i.e. a previous denominator of 0 on a coordinate's first step;
    that term (-D_1 * w_1) is what makes the telescoped iterate start from the current weights (random
    embedding initializers, warm starts) instead of shrinking them. z == 0 marks "never stepped":
    every later z that is exactly 0 has s == 0 and hence w == 0, where the term vanishes anyway. So the
    test needs no extra state, and a row first seen at any step gets the same treatment as a row seen
    at step 1 (Group Adam's epsilon term: the product's "row's own first update").
    """
    # |sign(z)| is 0 where z is still 0 and 1 elsewhere; multiply_no_nan gives exactly 0 there whatever
    # D_{t-1} is, and D_{t-1} itself elsewhere: a select's result, without TF's slow CPU select.
    denominator_old = tf.math.multiply_no_nan(denominator_old, tf.abs(tf.sign(z)))
    return z + increment - (denominator_new - denominator_old) * w


def group_lasso_step(w, z, increment, denominator_old, denominator_new, l1, l2, group_threshold):
    """One step of Algorithm 1 on a block of rows: returns (new weights, new z).

    The single closed-form step shared by every Group optimizer; the optimizers only differ in how
    they make `increment` and the denominators from their moments (m_t, V_t).
    """
    z_new = dual_update(z, w, increment, denominator_old, denominator_new)
    w_new = group_lasso_solve(z_new, denominator_new, l1, l2, group_threshold)
    return w_new, z_new


# --- moments (m_t, V_t) of the optimizers, as in tf_keras so that zero lambdas match it ------------


def adam_moments(m, v, gradient, one_minus_beta_1, one_minus_beta_2):
    """m_t = beta1*m + (1-beta1)*g, v_t = beta2*v + (1-beta2)*g^2 (in tf_keras's operation order).

    Takes 1 - beta (not beta): tf_keras computes it from the Python floats, and so must the caller
    for zero lambdas to reproduce tf_keras Adam to the last bit.
    """
    m_new = m + (gradient - m) * one_minus_beta_1
    v_new = v + (tf.square(gradient) - v) * one_minus_beta_2
    return m_new, v_new


def adam_step_size(learning_rate, beta_1, beta_2, step):
    """alpha_t = lr_t * sqrt(1 - beta2^t) / (1 - beta1^t), t counted from 1 (the epsilon-hat form)."""
    return learning_rate * tf.sqrt(1.0 - tf.pow(beta_2, step)) / (1.0 - tf.pow(beta_1, step))


def adagrad_accumulate(accumulator, gradient):
    """n_t = n_{t-1} + g^2."""
    return accumulator + tf.square(gradient)


def momentum_accumulate(momentum_buffer, gradient, momentum, learning_rate):
    """m_t = gamma * m_{t-1} + lr_t * g_t: the learning rate is folded in as tf_keras SGD does."""
    return momentum_buffer * momentum + gradient * learning_rate


# --- sparse gradients: the distinct rows of a batch -------------------------------------------------


def unique_rows(values, indices):
    """The distinct ids of a sparse gradient and, for each, the sum of its rows (tf.unique).

    Returns (ids [u], totals [u, ...]) with u the number of distinct ids, in order of first
    appearance. tf.unique is a hash table (O(n)); its output has a dynamic shape, which XLA can only
    bound (and compiles badly on CPU: 44 ms for 26,624 ids, against 0.3 ms uncompiled), so compiled
    steps use `unique_rows_padded` instead.
    """
    unique = tf.unique(indices)
    totals = tf.math.unsorted_segment_sum(values, unique.idx, tf.shape(unique.y)[0])
    return unique.y, totals


def unique_rows_padded(values, indices):
    """`unique_rows` with static shapes and no sort, for XLA: (ids [n+1], totals [n+1, ...], count).

    The first `count` entries of ids are the distinct ids of `indices` in order of first appearance
    (as tf.unique gives them), each with the sum of its rows (in order of position) in totals; the
    n + 1 - count entries after them are padding (id 0, totals 0), to be left out
    (`for_each_block`). One more entry than ids, so that gathers from them compile for an empty batch
    too (XLA rejects a gather from an empty tensor even where it would never run).

    Cost O(n) for n ids, independent of the size of the table they index (`first_positions`). A
    sort (what `sum_duplicate_rows` does) takes 3 ms on CPU under XLA for 26,624 ids, more than this
    whole function; tf.unique under XLA 44 ms.
    """
    n = tf.shape(indices)[0]
    positions = tf.range(n)
    first_position = first_positions(indices)
    first = tf.equal(first_position, positions)  # one True per distinct id
    slot_of_first = count_true(first) - 1
    slot = tf.gather(slot_of_first, first_position)  # the id's place among the distinct ids
    count = tf.reduce_sum(tf.cast(first, tf.int32))
    totals = tf.math.unsorted_segment_sum(values, slot, n + 1)
    ids = tf.math.unsorted_segment_max(indices, slot, n + 1)
    ids = tf.where(tf.range(n + 1) < count, ids, tf.zeros_like(ids))
    return ids, totals, count


def totals_per_position(values, indices, pairs=True):
    """For each position of an id list, the sum of the rows of all positions holding its id.

    Returns totals [n, ...]: every copy of an id carries its id's total (the rows summed in order of
    position, as `unique_rows` and `unique_rows_padded` sum them), so a step computed at each position
    writes identical rows for the copies of an id. Static shapes, no sort, for XLA: with `pairs`, one
    n x n comparison (`first_positions_by_pairs`: no loop, for a batch's ids of one field, n up to a
    few hundred); else `first_positions`' hashing (O(n), any n). A step on all n positions costs
    what `unique_rows_padded`'s one block of n rows costs, without its running count and block loop
    (which were most of the compile time of a train step with 26 tables).
    """
    first = first_positions_by_pairs(indices) if pairs else first_positions(indices)
    # One more segment than ids: the gather below compiles for an empty batch too (`unique_rows_padded`).
    totals = tf.math.unsorted_segment_sum(values, first, tf.shape(indices)[0] + 1)
    return tf.gather(totals, first)


def first_positions_by_pairs(indices):
    """`first_positions` by comparing every pair of ids: O(n^2) work in one step, for short id lists."""
    n = tf.shape(indices)[0]
    positions = tf.range(n)
    same = tf.equal(indices[:, None], indices[None, :])
    return tf.reduce_min(tf.where(same, positions[None, :], n), axis=1)


# Odd 64-bit multipliers (golden ratio, SplitMix64, MurmurHash3, xorshift*, PCG) as signed int64, one
# per hashing round of first_positions.
_HASH_MULTIPLIERS = [
    m - 2**64 if m >= 2**63 else m
    for m in (
        0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xFF51AFD7ED558CCD,
        0xC4CEB9FE1A85EC53, 0x2545F4914F6CDD1D, 0x5851F42D4C957F2D, 0xD6E8FEB86659FD93,
    )
]
_HASH_SLOTS_PER_ID = 4


def first_positions(indices):
    """For each position of a 1-D id tensor, the first position holding the same id ([n] int32).

    Static shapes, no sort, O(n) per round, for XLA. In each round every id not yet resolved writes
    its position into a hash table of 4n + 1 slots (multiplicative hashing, a new multiplier each
    round) with scatter-min, so the smallest position hashed to a slot holds it; the ids whose own
    first position holds their slot are resolved (all copies of an id hash alike, so one of them
    always wins against its copies). The others collided with another id and go to the next round.
    Each round resolves at least one id per taken slot; with the table at most a quarter full,
    collisions are rare (26,624 Zipf ids, 3,936 distinct: 1 round on 1e4 consecutive ids, 2 on ids
    spread over 1e7).
    """
    n = tf.shape(indices)[0]
    size = _HASH_SLOTS_PER_ID * n + 1  # slot `size` takes the writes of resolved ids
    ids64 = tf.cast(indices, tf.int64)
    # One more id, never read for a real comparison: a gather from it compiles for an empty batch.
    padded_indices = tf.pad(indices, [[0, 1]])
    multipliers = tf.constant(_HASH_MULTIPLIERS, tf.int64)
    positions = tf.range(n)

    def round_(step, first):
        multiplier = tf.gather(multipliers, step % len(_HASH_MULTIPLIERS))
        # The top 31 bits of the wrapped product (arithmetic shift, then masked) modulo the size.
        top = tf.bitwise.right_shift(ids64 * multiplier, 33) & 0x7FFFFFFF
        open_ = first < 0
        slot = tf.where(open_, tf.cast(top % tf.cast(size, tf.int64), tf.int32), size)
        table = tf.tensor_scatter_nd_min(tf.fill([size + 1], n), slot[:, None], positions)
        holder = tf.gather(table, slot)
        won = open_ & (holder < n) & tf.equal(tf.gather(padded_indices, holder), indices)
        return step + 1, tf.where(won, holder, first)

    _, first = tf.while_loop(
        lambda step, first: tf.reduce_any(first < 0), round_, (tf.constant(0), tf.fill([n], -1))
    )
    return first


def for_each_block(count, block_size, body):
    """Calls body(positions) on blocks of `block_size` positions covering [0, count), in a while loop.

    The blocks have a static shape (what XLA needs) and their number follows `count`, so a step over
    the distinct rows of a batch costs what those rows cost, not the padded length. Positions past
    `count` in the last block are replaced by the block's first position: their rows are copies of a
    row of the same block, so an update computed for them is identical to that row's, and scattering
    it twice writes the same value. (Padding with a row of an earlier block would update that row a
    second time.)
    """
    offsets = tf.range(block_size)
    blocks = (count + block_size - 1) // block_size

    # The loop counts blocks one by one: XLA (TF 2.16, CPU) skipped the body of a loop whose
    # counter stepped by block_size when `count` was a compile-time constant 1.
    def step(block):
        start = block * block_size
        positions = start + offsets
        body(tf.where(positions < count, positions, start))
        return (block + 1,)

    tf.while_loop(lambda block: block < blocks, step, (tf.constant(0, tf.int32),))


def sum_duplicate_rows(values, indices):
    """Sums gradient rows that share an id, keeping the static shape [n, ...] (no tf.unique).

    Returns (ids, totals): the ids sorted (duplicates kept) and, for each position, the total of all
    rows with that id. Every copy of an id carries the same total, so an update computed from it is the
    same for each copy and a scatter_update with the duplicate ids writes identical rows: harmless.
    (The optimizers no longer use it: a step on every copy costs what the batch's ids cost, not its
    distinct rows; see `unique_rows` and `unique_rows_padded`.)
    """
    order = tf.argsort(indices)
    ids = tf.gather(indices, order)
    sorted_values = tf.gather(values, order)
    starts_run = tf.concat(
        [tf.ones_like(ids[:1], dtype=tf.bool), tf.not_equal(ids[1:], ids[:-1])], axis=0
    )
    run = count_true(starts_run) - 1
    totals = tf.math.unsorted_segment_sum(sorted_values, run, tf.shape(ids)[0])
    return ids, tf.gather(totals, run)


_SCAN_BLOCK = 128


def count_true(flags):
    """Inclusive running count of True in a 1-D bool tensor (= cumsum of its 0/1 values), as int32.

    XLA lowers tf.cumsum to a reduce-window whose cost grows with the square of the length on CPU
    (26,624 ids: 32 ms measured, more than the whole rest of the step); this blocked scan is linear.
    """
    return _prefix_sum(tf.cast(flags, tf.int32), bound=1)


def _prefix_sum(counts, bound):
    """Inclusive cumsum of a 1-D int32 tensor whose entries lie in [0, bound].

    Scanned in blocks: the sums within a block are one small matmul with a triangular matrix, exact
    in float32 while a block sums to less than 2**24; the offsets of the blocks are the same scan, one
    level up, of the block totals. A length unknown when tracing (Keras traces its train step with
    the batch dimension None; XLA knows it when compiling) is padded with the length from tf.shape,
    and the recursion stops at the float32 limit (three levels, then a cumsum of n / 2**21 entries).
    """
    n = counts.shape[0]
    if (n is not None and n <= _SCAN_BLOCK) or bound * _SCAN_BLOCK >= 2**24:
        return tf.cumsum(counts)
    length = tf.shape(counts)[0] if n is None else n
    padded = tf.pad(tf.cast(counts, tf.float32), [[0, (-length) % _SCAN_BLOCK]])
    blocks = tf.reshape(padded, [-1, _SCAN_BLOCK])
    upper = tf.linalg.band_part(tf.ones([_SCAN_BLOCK, _SCAN_BLOCK]), 0, -1)  # upper[j, k] = j <= k
    within = tf.cast(tf.matmul(blocks, upper), tf.int32)
    totals = within[:, -1]
    before = _prefix_sum(totals, bound * _SCAN_BLOCK) - totals
    return tf.reshape(within + before[:, None], [-1])[:length]
