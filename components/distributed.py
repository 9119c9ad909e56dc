"""Training on a cluster: the strategies of `trainer.distribution` that span several processes.

Every task of a cluster runs the same Trainer (TFX's executor, `run_fn`) with its own ``TF_CONFIG``
(``{"cluster": {"chief": [...], "worker": [...], "ps": [...]}, "task": {"type": ..., "index": ...}}``),
as a Kubeflow TFJob or a Vertex AI custom job sets it in each pod; `components.local_cluster` starts
such a cluster as processes on localhost ports.

``multi_worker`` -- `tf.distribute.MultiWorkerMirroredStrategy`: data parallel, synchronous. Every
task trains a full copy of the model on its part of each global batch (`trainer.batch_size` is the
global batch); gradients are summed with collectives, so the model equals a single process's on the
same global batches (up to the order of float sums). All tasks run `run_fn` to the end (saving runs
collectives too); only the chief (or worker 0) writes the model. Each task pings its peers every
`PEER_CHECK_INTERVAL_S`: a task that died aborts the collectives of the others, whose run then fails
with one line (`ClusterError`).

``parameter_server`` -- `tf.distribute.ParameterServerStrategy`: the chief is the coordinator (it
runs `run_fn`, builds the model, schedules training steps on the workers with tf_keras's
`ClusterCoordinator`, evaluates, exports); the ``worker`` and ``ps`` tasks only run a TF server
(`serve_if_cluster_task`). Each embedding table is a `ShardedVariable` split by rows over all
parameter servers (`TablePartitioner`; `optim.sharded`), its optimizer slots sharded with it; dense
weights are whole variables placed round-robin on the parameter servers, as TF places them. Workers
read their own shard of the training batches (every N-th batch, `train_dataset_creator`) and step
asynchronously. A parameter server that dies fails the run with one line; a worker that dies is
replaced by the others (TF's coordinator reschedules its steps).

Neither strategy compiles the train step with XLA (tf_keras cannot compile across replicas, nor
with variables on other tasks): ``jit_compile`` is turned off and `training.json` says so.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import threading
from typing import Any, Dict, Optional, Tuple

import tensorflow as tf
from absl import logging

# How often a MultiWorkerMirroredStrategy task checks that its peers are alive (TF's default is
# 30 s), and how long each check and the first wait for the whole cluster may take.
PEER_CHECK_INTERVAL_S = 5
PEER_CHECK_TIMEOUT_S = 5
CLUSTER_WAIT_S = 600

MULTI_WORKER, PARAMETER_SERVER = "multi_worker", "parameter_server"


class ClusterError(RuntimeError):
    """A task of the training cluster failed or became unreachable; no model was exported."""


# -- the cluster of TF_CONFIG -------------------------------------------------------------------------
def tf_config() -> Dict[str, Any]:
    return json.loads(os.environ.get("TF_CONFIG") or "{}")


def cluster() -> Dict[str, list]:
    return dict(tf_config().get("cluster") or {})


def task() -> Tuple[Optional[str], int]:
    spec = tf_config().get("task") or {}
    return spec.get("type"), int(spec.get("index", 0))


def auto_distribution() -> Optional[str]:
    """What ``auto`` means for this TF_CONFIG: parameter_server with ps tasks, multi_worker with more
    than one chief/worker task, None (decide by devices) otherwise."""
    spec = cluster()
    if spec.get("ps"):
        return PARAMETER_SERVER
    if sum(len(tasks) for role, tasks in spec.items() if role in ("chief", "worker")) > 1:
        return MULTI_WORKER
    return None


def task_address(job: str, index: int) -> Optional[str]:
    tasks = cluster().get(job) or []
    return tasks[index] if 0 <= index < len(tasks) else None


# -- strategies ---------------------------------------------------------------------------------------
def multi_worker_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy from TF_CONFIG, with a peer check every PEER_CHECK_INTERVAL_S and
    at most CLUSTER_WAIT_S to wait for the other tasks at the start (TF waits forever by default)."""
    from tensorflow.python.distribute import collective_all_reduce_strategy as collective
    extended = collective.CollectiveAllReduceExtended
    # Class attributes, read when the strategy is created (which starts the check thread).
    extended._check_health_interval = PEER_CHECK_INTERVAL_S
    extended._check_health_timeout = PEER_CHECK_TIMEOUT_S
    extended._check_health_initial_timeout = CLUSTER_WAIT_S
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as error:
        if "Timeout waiting for the cluster" in str(error):
            raise ClusterError(f"training failed: the other tasks of {cluster()} did not all start within "
                               f"{CLUSTER_WAIT_S} s. No model was exported.") from None
        raise


def parameter_server_strategy() -> tf.distribute.Strategy:
    """ParameterServerStrategy from TF_CONFIG (run on the chief, the coordinator); embedding tables
    sharded over every parameter server (built under `sharded_tables`)."""
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    spec = resolver.cluster_spec()
    if "ps" not in spec.jobs or "worker" not in spec.jobs:
        raise ValueError(f"trainer.distribution parameter_server needs 'worker' and 'ps' tasks in TF_CONFIG's "
                         f"cluster, got {sorted(spec.jobs)}")
    if resolver.task_type not in ("chief", None):
        raise ValueError(f"the parameter-server coordinator runs as the 'chief' task, not {resolver.task_type!r}")
    wait_for_tasks(("worker", "ps"), CLUSTER_WAIT_S)
    return tf.distribute.ParameterServerStrategy(
        resolver, variable_partitioner=TablePartitioner(spec.num_tasks("ps")))


def wait_for_tasks(jobs, timeout_s: float, poll_s: float = 0.5) -> None:
    """Until every task of `jobs` accepts TCP connections on its address (its TF server is up), at most
    `timeout_s`; then a ClusterError naming the tasks still missing (TF's coordinator would wait for
    a parameter server forever)."""
    import socket
    import time
    pending = [(job, i, address) for job in jobs for i, address in enumerate(cluster().get(job) or [])]
    deadline = time.monotonic() + timeout_s
    while pending:
        still = []
        for job, i, address in pending:
            host, _, port = address.rpartition(":")
            try:
                with socket.create_connection((host, int(port)), timeout=2):
                    pass
            except OSError:
                still.append((job, i, address))
        pending = still
        if pending and time.monotonic() > deadline:
            names = ", ".join(f"{job} {i} ({address})" for job, i, address in pending)
            raise ClusterError(f"training failed: {names} did not start within {timeout_s:.0f} s. "
                               "No model was exported.")
        if pending:
            time.sleep(poll_s)


def is_parameter_server(strategy) -> bool:
    return isinstance(strategy, tf.distribute.ParameterServerStrategy)


def is_multi_worker(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def serve_if_cluster_task(distribution: str) -> bool:
    """On a ``worker`` or ``ps`` task of a parameter-server cluster: run this task's TF server until
    the process is stopped (the coordinator drives it; a TFJob ends these pods when the chief ends)
    and never return. Elsewhere: return False at once."""
    if distribution == "auto":
        distribution = auto_distribution() or "none"
    task_type, index = task()
    if distribution != PARAMETER_SERVER or task_type not in ("worker", "ps"):
        return False
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if task_type == "worker":
        # A worker runs a step and the coordinator's other calls at once: with as few inter-op
        # threads as a small machine's cores it can stall (TF's own test clusters raise them too).
        try:
            tf.config.threading.set_inter_op_parallelism_threads(
                max(4, tf.config.threading.get_inter_op_parallelism_threads()))
        except RuntimeError:  # TF's runtime is already initialized in this process: keep its setting
            pass
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=task_type, task_index=index,
                                  protocol=resolver.rpc_layer or "grpc", start=True)
    logging.info("parameter-server cluster: %s %d serving at %s", task_type, index, task_address(task_type, index))
    server.join()
    return True  # not reached: join() returns only when the server is stopped


# -- sharded embedding tables -------------------------------------------------------------------------
_creating = threading.local()
_TABLE_SCOPE = re.compile(r"(?:^|/)embedding_[^/]+/?$")


class TablePartitioner:
    """A `variable_partitioner` that splits embedding tables (and nothing else) into `num_shards` row
    shards. The strategy gives a partitioner only a shape and a dtype; `sharded_tables` marks the
    table variables while they are created."""

    def __init__(self, num_shards: int):
        self.num_shards = int(num_shards)

    def __call__(self, shape, dtype):
        rank = len(shape)
        if getattr(_creating, "table", False) and rank >= 1 and self.num_shards > 1:
            return [self.num_shards] + [1] * (rank - 1)
        return [1] * rank


@contextlib.contextmanager
def sharded_tables(strategy):
    """Within `strategy.scope()`: create each Keras ``embedding_<field>`` table as a ShardedVariable
    (parameter-server strategy only) named like the unsharded table (``embedding_<field>/embeddings``,
    so its SavedModel variable and checkpoint keys are the usual ones)."""
    if not is_parameter_server(strategy):
        yield
        return
    from tensorflow.python.distribute import sharded_variable

    def creator(next_creator, **kwargs):
        name = kwargs.get("name")
        table = name == "embeddings" and bool(_TABLE_SCOPE.search(tf.get_current_name_scope() or ""))
        _creating.table = table
        try:
            variable = next_creator(**kwargs)
        finally:
            _creating.table = False
        if table and isinstance(variable, sharded_variable.ShardedVariable):
            variable = sharded_variable.ShardedVariable(variable.variables, name=name)
        return variable

    with tf.variable_creator_scope(creator):
        yield


def describe(strategy) -> Dict[str, Any]:
    """What training.json records about a cluster strategy (nothing for one process)."""
    if not (is_parameter_server(strategy) or is_multi_worker(strategy)):
        return {}
    task_type, index = task()
    spec = cluster()
    out = {"task": f"{task_type} {index}", "workers": len(spec.get("chief", [])) + len(spec.get("worker", []))}
    if is_parameter_server(strategy):
        out.update(workers=len(spec.get("worker", [])), parameter_servers=len(spec.get("ps", [])))
    return out


# -- what run_fn does differently on a cluster --------------------------------------------------------
def jit_compile_allowed(strategy) -> bool:
    """tf_keras compiles a train step with XLA on one process's own devices only."""
    return strategy.num_replicas_in_sync == 1 and not is_parameter_server(strategy) and not is_multi_worker(strategy)


def compile_options(strategy) -> Dict[str, Any]:
    """model.compile arguments of a strategy: exact evaluation on the workers under parameter servers
    (each eval shard visited once, by whichever worker; tf_keras's pss_evaluation_shards)."""
    if is_parameter_server(strategy):
        return {"pss_evaluation_shards": max(1, strategy.extended._num_workers)}
    return {}


def without_autotuning(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with tf.data's autotuning off: AUTOTUNE parallelism becomes the CPU count (at most
    16), an AUTOTUNE prefetch keeps its own growing buffer.

    With autotuning on, every iterator has a thread that tunes it, and deleting the iterator waits
    for that thread. Keras deletes the Trainer's train and eval iterators at every epoch's end; with
    1M rows those waits took up to 26 s of a fit, at random, and the epochs were no faster for the
    tuning (benchmarks/trainer_run_bench.py, variant autotuned_input).
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


# Records counted per step of the counting loop: one step per record cost several times the gunzip
# itself (~20 s of the Trainer's start at 1M rows, ~4 s in blocks).
COUNT_BLOCK_RECORDS = 8192


def count_records(file_pattern) -> int:
    """Records in (gzipped) TFRecord files, as ExampleGen writes them: counted in blocks, the files
    read in parallel."""
    patterns = file_pattern if isinstance(file_pattern, (list, tuple)) else [file_pattern]
    files = sorted(path for pattern in patterns for path in tf.io.gfile.glob(pattern))
    if not files:
        return 0

    def file_blocks(path, gzipped):
        compression = tf.where(gzipped, "GZIP", "")
        return tf.data.TFRecordDataset(path, compression_type=compression).batch(COUNT_BLOCK_RECORDS)

    def add_block(count, block):
        return count + tf.size(block, out_type=tf.int64)

    blocks = tf.data.Dataset.from_tensor_slices((files, [path.endswith(".gz") for path in files])).interleave(
        file_blocks, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    return int(without_autotuning(blocks).reduce(tf.constant(0, tf.int64), add_block).numpy())


def train_dataset_creator(make_dataset):
    """A tf_keras DatasetCreator for the workers: worker i of n reads batches i, i+n, ... of the
    training dataset (`make_dataset()`, batched), repeated (the coordinator counts the steps)."""
    import tf_keras as keras

    def dataset_fn(input_context):
        dataset = make_dataset()
        if input_context.num_input_pipelines > 1:
            dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        return dataset.repeat()

    return keras.utils.experimental.DatasetCreator(dataset_fn)


def sharded_by_batches(strategy, dataset):
    """A dataset as a multi-task strategy splits it: by batches (tf.data's DATA auto-shard policy),
    not by files (its default, which needs at least one file per worker; ExampleGen may write one).
    Multi-worker: each worker takes its part of every global batch, so the global batches are the
    single process's. Parameter servers: the eval split's shards of tf_keras's exact evaluation."""
    if not (is_parameter_server(strategy) or is_multi_worker(strategy)):
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def parameter_server_steps(train_steps: Optional[int], train_files, batch_size: int) -> int:
    """Steps per epoch under parameter servers (their datasets repeat): `train_steps`, or one pass
    over the training split in global batches."""
    if train_steps:
        return int(train_steps)
    batches = split_batches(train_files, batch_size)
    if batches == 0:
        raise ValueError(f"the training split {train_files} holds no examples")
    return batches


def split_batches(files, batch_size: int) -> int:
    """Batches in one pass over a split's files (the last one partial): its records counted."""
    return math.ceil(count_records(files) / batch_size)


def coordinator_callbacks(strategy, callbacks):
    """Callbacks that run per batch make a parameter-server coordinator wait for every step's result
    (one step in flight at a time); under that strategy only the per-epoch ones are kept (a NaN loss
    is still caught: by the epoch's metrics and the weights check before export)."""
    if not is_parameter_server(strategy):
        return list(callbacks)
    kept = []
    for callback in callbacks:
        if callback._implements_train_batch_hooks():  # what tf_keras's CallbackList asks
            logging.info("parameter servers: callback %s runs per batch, left out", type(callback).__name__)
        else:
            kept.append(callback)
    return kept


def save_options(strategy):
    """SavedModel options: under parameter servers every variable is read and written by the
    coordinator itself (TF's default writes each shard from its parameter server's host, which then
    needs the model directory too)."""
    if not is_parameter_server(strategy):
        return None
    task_type, index = task()
    return tf.saved_model.SaveOptions(
        experimental_io_device=f"/job:{task_type or 'chief'}/replica:0/task:{index}/device:CPU:0")


def wait_for_chief_model(serving_model_dir: str, timeout_s: float = CLUSTER_WAIT_S, poll_s: float = 1.0) -> None:
    """On a multi-worker task that is not the chief: wait until the chief's model is in the shared
    output (every task of a TFJob gets the same Model artifact; TFX's executor checks on each task
    that the model exists once run_fn returns). The chief writes it a moment after the last
    collective; if it never does, this task fails too."""
    import time
    deadline = time.monotonic() + timeout_s
    while not tf.io.gfile.exists(serving_model_dir):
        if time.monotonic() > deadline:
            raise ClusterError(f"training failed: the chief wrote no model to {serving_model_dir} within "
                               f"{timeout_s:.0f} s after training. No model was exported.")
        time.sleep(poll_s)


# -- failures -----------------------------------------------------------------------------------------
_TASK = re.compile(r"/job:(chief|worker|ps|evaluator)(?:/replica:\d+)?/task:(\d+)")
_CLUSTER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
                   tf.errors.DeadlineExceededError, tf.errors.InternalError, tf.errors.UnknownError,
                   tf.errors.NotFoundError, tf.errors.FailedPreconditionError)


def _failed_task(message: str) -> Optional[Tuple[str, int]]:
    """The first task named in a TF error message other than this one (TF names the local device
    of the failing op too, and then the peer that failed)."""
    own = task()
    for found in _TASK.finditer(message):
        named = (found.group(1), int(found.group(2)))
        if named != own:
            return named
    return None


def cluster_error(error: BaseException, strategy) -> Optional[ClusterError]:
    """The one-line ClusterError for a failure of another task of the cluster, else None."""
    if not (is_parameter_server(strategy) or is_multi_worker(strategy)):
        return None
    if not isinstance(error, _CLUSTER_ERRORS):
        return None
    message = getattr(error, "message", None) or str(error)
    failed = _failed_task(message)
    if failed is None and not isinstance(error, (tf.errors.UnavailableError, tf.errors.AbortedError,
                                                 tf.errors.CancelledError)):
        return None
    if failed is not None:
        address = task_address(*failed)
        who = f"{failed[0]} {failed[1]}" + (f" ({address})" if address else "")
    else:
        who = "a task of the cluster"
    first = _telling_line(message) or type(error).__name__
    return ClusterError(f"training failed: {who} is unreachable or failed ({type(error).__name__}: {first}). "
                        "No model was exported.")


_TELLING = re.compile(r"is down|failed to connect|connection (?:reset|refused)|socket closed|unavailable|"
                      r"aborted|deadline|cancelled|not found|unable to find|preempted", re.IGNORECASE)
_NOISE = re.compile(r"^(?:Graph execution error|Detected at node|<stack traces|\[\[|Additional GRPC|:\{)")


def _telling_line(message: str) -> str:
    """The line of a TF error message that says what happened (TF puts node traces first)."""
    message = re.sub(r"\{\{[^}]*\}\}", "", message)  # {{function_node ...}} markers
    lines = [re.sub(r"^(?:\w+Error: )+", "", " ".join(line.split())) for line in message.splitlines()]
    lines = [line for line in lines if line and not _NOISE.match(line)]
    line = next((line for line in lines if _TELLING.search(line)), lines[0] if lines else "")
    return line[:240]


@contextlib.contextmanager
def cluster_errors(strategy):
    """Turns the failure of another task into one ClusterError line (and nothing else)."""
    try:
        yield
    except ClusterError:
        raise
    except Exception as error:  # noqa: BLE001 - re-raised unless it is a cluster failure
        translated = cluster_error(error, strategy)
        if translated is None:
            raise
        logging.error("%s", translated)
        raise translated from None


def main() -> int:
    """``python -m components.distributed``: run this task's TF server (a parameter-server cluster's
    worker or ps, from TF_CONFIG) until stopped -- what `run_fn` does on those tasks, without TFX."""
    task_type, _ = task()
    if task_type not in ("worker", "ps"):
        raise SystemExit(f"python -m components.distributed serves a 'worker' or 'ps' task; TF_CONFIG says {task_type!r}")
    serve_if_cluster_task(PARAMETER_SERVER)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
