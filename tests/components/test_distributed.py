"""components.distributed without a cluster: TF_CONFIG roles, the one-line failure of another task,
the start-up wait, the table partitioner, callbacks on a parameter-server coordinator, and the Trainer's
staged export (nothing half-written when it fails). The clusters themselves: test_distributed_training."""
import json
import os
import socket

import pytest
import tensorflow as tf

from components import distributed


def set_cluster(monkeypatch, cluster, task_type, index):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}}))


CLUSTER = {"chief": ["c:1"], "worker": ["w0:2", "w1:3"], "ps": ["p0:4", "p1:5"]}


def test_auto_distribution_from_tf_config(monkeypatch):
    set_cluster(monkeypatch, CLUSTER, "chief", 0)
    assert distributed.auto_distribution() == "parameter_server"
    set_cluster(monkeypatch, {"worker": ["w0:2", "w1:3"]}, "worker", 1)
    assert distributed.auto_distribution() == "multi_worker" and distributed.task() == ("worker", 1)
    monkeypatch.delenv("TF_CONFIG")
    assert distributed.auto_distribution() is None and distributed.task() == (None, 0)
    assert not distributed.serve_if_cluster_task("auto")


@pytest.mark.parametrize("message, own, expected", [
    # MultiWorkerMirroredStrategy: the op's own device first, then the peer that failed.
    ("{{function_node __wrapped__CollectiveBcastSend_device_/job:worker/replica:0/task:0/device:CPU:0}} Collective "
     "ops is aborted by: Error reported from /job:worker/task:1: Task /job:worker/replica:0/task:1 heartbeat "
     "timeout.", ("worker", 0), "worker 1 (w1:3)"),
    ("cluster check alive failed, /job:worker/replica:0/task:1 is down", ("worker", 0), "worker 1 (w1:3)"),
    # A parameter server that died, seen from the coordinator.
    ("Graph execution error:\n\nDetected at node foo\n<stack traces unavailable>\nfailed to connect to all "
     "addresses\nAdditional GRPC error information from remote target /job:ps/replica:0/task:1",
     ("chief", 0), "ps 1 (p1:5)"),
])
def test_a_failed_task_is_named_in_one_line(monkeypatch, message, own, expected):
    set_cluster(monkeypatch, CLUSTER, *own)
    monkeypatch.setattr(distributed, "is_multi_worker", lambda s: True)
    error = distributed.cluster_error(tf.errors.UnavailableError(None, None, message), object())
    text = str(error)
    assert text.startswith(f"training failed: {expected} is unreachable or failed (UnavailableError: ")
    assert text.endswith("No model was exported.") and "\n" not in text and "{{" not in text
    assert "Graph execution error" not in text and "stack traces" not in text


def test_other_errors_are_left_alone(monkeypatch):
    set_cluster(monkeypatch, CLUSTER, "chief", 0)
    unavailable = tf.errors.UnavailableError(None, None, "/job:ps/replica:0/task:0 is down")
    assert distributed.cluster_error(unavailable, tf.distribute.get_strategy()) is None  # one process
    monkeypatch.setattr(distributed, "is_parameter_server", lambda s: True)
    assert distributed.cluster_error(ValueError("bad value"), object()) is None
    assert distributed.cluster_error(tf.errors.InvalidArgumentError(None, None, "NaN in feature"), object()) is None
    with pytest.raises(distributed.ClusterError, match=r"^training failed: ps 0 \(p0:4\)"):
        with distributed.cluster_errors(object()):
            raise unavailable
    with pytest.raises(ValueError, match="bad value"):
        with distributed.cluster_errors(object()):
            raise ValueError("bad value")


def test_start_up_waits_for_the_servers_then_fails_in_one_line(monkeypatch):
    listening = socket.socket()
    listening.bind(("localhost", 0))
    listening.listen(64)
    closed = socket.socket()
    closed.bind(("localhost", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    try:
        up = f"localhost:{listening.getsockname()[1]}"
        set_cluster(monkeypatch, {"chief": ["localhost:1"], "worker": [up], "ps": [up]}, "chief", 0)
        distributed.wait_for_tasks(("worker", "ps"), timeout_s=5)  # returns: both accept connections
        set_cluster(monkeypatch, {"chief": ["localhost:1"], "worker": [up], "ps": [up, f"localhost:{dead_port}"]},
                    "chief", 0)
        with pytest.raises(distributed.ClusterError,
                           match=rf"^training failed: ps 1 \(localhost:{dead_port}\) did not start within 1 s\. "
                                 r"No model was exported\.$"):
            distributed.wait_for_tasks(("worker", "ps"), timeout_s=1, poll_s=0.2)
    finally:
        listening.close()


def test_partitioner_splits_only_tables_being_created():
    partitioner = distributed.TablePartitioner(3)
    assert partitioner(tf.TensorShape([100, 8]), tf.float32) == [1, 1]
    distributed._creating.table = True
    try:
        assert partitioner(tf.TensorShape([100, 8]), tf.float32) == [3, 1]
    finally:
        distributed._creating.table = False
    assert distributed.TablePartitioner(1)(tf.TensorShape([100, 8]), tf.float32) == [1, 1]
    # Without parameter servers the scope changes nothing.
    with distributed.sharded_tables(tf.distribute.get_strategy()):
        variable = tf.Variable(tf.zeros([4, 2]), name="embeddings")
    assert isinstance(variable, tf.Variable)


def test_per_batch_callbacks_are_left_out_on_a_parameter_server_coordinator(monkeypatch):
    import tf_keras as keras

    from components.trainer_module import KeepBestEpoch
    from components.training import StopOnNonFiniteLoss as _StopOnNonFiniteLoss
    callbacks = [_StopOnNonFiniteLoss(), keras.callbacks.TensorBoard(log_dir="/tmp/x", update_freq="epoch"),
                 KeepBestEpoch("/tmp/x")]
    assert distributed.coordinator_callbacks(tf.distribute.get_strategy(), callbacks) == callbacks
    monkeypatch.setattr(distributed, "is_parameter_server", lambda s: True)
    kept = distributed.coordinator_callbacks(object(), callbacks)
    assert [type(c).__name__ for c in kept] == ["TensorBoard", "KeepBestEpoch"]


def test_staged_export_is_all_or_nothing(tmp_path):
    from components.trainer_module import _staged
    root = tmp_path / "model"
    root.mkdir()
    with pytest.raises(RuntimeError, match="parameter server gone"):
        with _staged(str(root)) as staging:
            os.makedirs(os.path.join(staging, "Format-Serving"))
            with open(os.path.join(staging, "Format-Serving", "saved_model.pb"), "w") as f:
                f.write("half")
            raise RuntimeError("parameter server gone")
    assert os.listdir(root) == []
    with _staged(str(root)) as staging:
        os.makedirs(os.path.join(staging, "Format-Serving"))
        os.makedirs(os.path.join(staging, "warm_start"))
    assert sorted(os.listdir(root)) == ["Format-Serving", "warm_start"]


def test_the_chief_model_wait_is_bounded(tmp_path):
    with pytest.raises(distributed.ClusterError, match=r"the chief wrote no model to .* within 0 s"):
        distributed.wait_for_chief_model(str(tmp_path / "Format-Serving"), timeout_s=0.3, poll_s=0.1)
    (tmp_path / "Format-Serving").mkdir()
    distributed.wait_for_chief_model(str(tmp_path / "Format-Serving"), timeout_s=0.3)


def _write_records(path, count, gzip):
    with tf.io.TFRecordWriter(str(path), options="GZIP" if gzip else None) as writer:
        for i in range(count):
            writer.write(f"record-{i}".encode())


def test_records_are_counted_in_blocks_over_every_file_gzipped_or_not(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "COUNT_BLOCK_RECORDS", 4)  # several blocks per file, a partial last one
    _write_records(tmp_path / "a-00000.gz", 10, gzip=True)
    _write_records(tmp_path / "a-00001.gz", 3, gzip=True)
    _write_records(tmp_path / "b-00000", 5, gzip=False)
    _write_records(tmp_path / "c-00000.gz", 0, gzip=True)
    assert distributed.count_records(str(tmp_path / "a-*")) == 13
    assert distributed.count_records([str(tmp_path / "a-*"), str(tmp_path / "b-*"), str(tmp_path / "c-*")]) == 18
    assert distributed.count_records(str(tmp_path / "none-*")) == 0
    autotuned = []
    reduce = tf.data.Dataset.reduce
    monkeypatch.setattr(tf.data.Dataset, "reduce",
                        lambda self, *args: autotuned.append(self.options().autotune.enabled) or reduce(self, *args))
    assert distributed.count_records(str(tmp_path / "a-*")) == 13
    assert autotuned == [False]  # counted without tf.data's autotuning (distributed.without_autotuning)
    assert distributed.split_batches([str(tmp_path / "*")], 4) == 5  # 18 records: 4 whole batches and a partial one
