"""Publishing into a serving directory that other pushes and operators share (issue #15): concurrent
pushes, their leftovers, models.config merged rather than replaced, pinned versions kept, permissions.

Synthetic SavedModel-shaped trees (publish only copies files), so no model is trained here."""
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest
import tensorflow as tf

from components.pruned_pusher import pruning
from serving import file_lock, tf_serving_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = "ctr"


def make_tree(root, files=3, tag="a"):
    """A SavedModel-shaped directory: saved_model.pb, variables/, assets/ and `files` shards."""
    paths = ["saved_model.pb", "variables/variables.index"] + [
        f"variables/part-{tag}-{i // 100:03d}/shard-{i:05d}" for i in range(files)]
    for i, rel in enumerate(paths):
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(f"{tag}{i}" * (1 + i % 7))
    return str(root)


def listing(model_dir):
    return sorted(os.listdir(model_dir))


_PUSHER = """
import json, os, sys, time
os.environ["TF_USE_LEGACY_KERAS"] = "1"
from components.pruned_pusher import pruning
source, base, ready, go = sys.argv[1:5]
open(ready, "w").close()
deadline = time.time() + 120
while not os.path.exists(go):
    if time.time() > deadline:
        sys.exit("never told to go")
    time.sleep(0.005)
path, version = pruning.publish(source, base, "ctr", keep_versions=5, lock_timeout_s=120)
print(json.dumps({"path": path, "version": version}))
"""


def test_two_pushes_in_separate_processes_publish_only_complete_versions(tmp_path):
    # The second push starts while the first is copying (its temp folder exists): before the lock,
    # the second one's cleanup deleted that folder and the first renamed what was left of it.
    sources = {tag: make_tree(tmp_path / f"src-{tag}", files=2500, tag=tag) for tag in "ab"}
    base = str(tmp_path / "serving")
    model_dir = os.path.join(base, MODEL)
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_USE_LEGACY_KERAS="1")
    procs = {}
    for tag in "ab":
        procs[tag] = subprocess.Popen(
            [sys.executable, "-c", _PUSHER, sources[tag], base, str(tmp_path / f"ready-{tag}"),
             str(tmp_path / f"go-{tag}")], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
    try:
        deadline = time.time() + 120
        while not all(os.path.exists(tmp_path / f"ready-{tag}") for tag in "ab"):
            assert time.time() < deadline and all(p.poll() is None for p in procs.values()), "pushers did not start"
            time.sleep(0.01)
        open(tmp_path / "go-a", "w").close()
        while not (os.path.isdir(model_dir) and any(n.startswith(pruning.TEMP_PREFIX) for n in os.listdir(model_dir))):
            assert time.time() < deadline and procs["a"].poll() is None, "first push never started copying"
            time.sleep(0.002)
        open(tmp_path / "go-b", "w").close()
        results = {}
        for tag, proc in procs.items():
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-3000:]
            results[tag] = json.loads(out.strip().splitlines()[-1])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    assert results["a"]["version"] < results["b"]["version"]
    assert listing(model_dir) == sorted(str(r["version"]) for r in results.values())  # no temp dir, no lock
    for tag, result in results.items():
        assert pruning.manifest(result["path"]) == pruning.manifest(sources[tag]), tag


def _dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _in_flight(path, pid, host=None, started=None):
    tf.io.gfile.makedirs(os.path.join(path, "variables"))
    with tf.io.gfile.GFile(os.path.join(path, "variables", "variables.index"), "w") as f:
        f.write("partial")
    with tf.io.gfile.GFile(os.path.join(path, pruning.OWNER_FILE), "w") as f:
        f.write(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                            "started": time.time() if started is None else started}))


def test_stale_temp_dirs_are_removed_only_when_their_pusher_is_gone(tmp_path):
    model_dir = str(tmp_path / "serving" / MODEL)
    live = subprocess.Popen(["sleep", "120"])
    try:
        _in_flight(os.path.join(model_dir, ".tmp-1-dead"), _dead_pid())
        _in_flight(os.path.join(model_dir, ".tmp-2-live"), live.pid)
        _in_flight(os.path.join(model_dir, ".tmp-3-other-host"), 1, host="elsewhere.invalid")
        _in_flight(os.path.join(model_dir, ".tmp-4-other-host-old"), 1, host="elsewhere.invalid",
                   started=time.time() - pruning.STALE_AGE_S - 60)
        os.makedirs(os.path.join(model_dir, ".tmp-5-no-owner"))  # left by a pusher before the owner record
        path, version = pruning.publish(make_tree(tmp_path / "src"), str(tmp_path / "serving"), MODEL, now=10)
        assert listing(model_dir) == [".tmp-2-live", ".tmp-3-other-host", "10"]
        live.kill()
        live.wait()
        pruning.publish(make_tree(tmp_path / "src"), str(tmp_path / "serving"), MODEL, now=10)
        assert listing(model_dir) == [".tmp-3-other-host", "10", "11"]
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()


def test_object_store_in_flight_version_of_a_live_pusher_is_kept(tmp_path):
    model_dir = f"ram://stale-{os.getpid()}/serving/{MODEL}"
    live = subprocess.Popen(["sleep", "120"])
    try:
        _in_flight(f"{model_dir}/7", live.pid)  # a version still being written: no saved_model.pb yet
        _in_flight(f"{model_dir}/8", _dead_pid())
        assert pruning.remove_stale_temp_dirs(model_dir) == [f"{model_dir}/8"]
        assert pruning.existing_versions(model_dir) == [7]
    finally:
        live.kill()
        live.wait()


def test_second_pusher_gives_up_after_the_timeout_naming_the_holder(tmp_path):
    base = str(tmp_path / "serving")
    holding, release = threading.Event(), threading.Event()

    def hold():
        with pruning.push_lock(os.path.join(base, MODEL)):
            holding.set()
            release.wait(30)
    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(30)
        started = time.monotonic()
        with pytest.raises(file_lock.LockTimeout,
                           match=rf"push lock .*\.push\.lock is held by pid {os.getpid()} on host "
                                 rf"{socket.gethostname()} since .*gave up after waiting 0\.5 s"):
            pruning.publish(make_tree(tmp_path / "src"), base, MODEL, lock_timeout_s=0.5)
        assert 0.5 <= time.monotonic() - started < 10
    finally:
        release.set()
        holder.join()
    assert listing(os.path.join(base, MODEL)) == []  # nothing published, lock file gone
    assert pruning.publish(make_tree(tmp_path / "src"), base, MODEL, now=3, lock_timeout_s=0.5)[1] == 3


OTHER_MODEL = """
config {
  name: "other"
  base_path: "/srv/other"
  model_platform: "tensorflow"
  model_version_policy { specific { versions: 5 versions: 6 } }
  version_labels { key: "stable" value: 5 }
  version_labels { key: "canary" value: 6 }
}
"""
PINS = {
    "specific": 'model_version_policy { specific { versions: 100 } }',
    "label": 'model_version_policy { latest { num_versions: 2 } } version_labels { key: "stable" value: 100 }',
}


def _push(source, base, now):
    """What prune_and_push does after pruning: publish, then update models.config, under one lock."""
    with pruning.push_lock(os.path.join(base, MODEL)):
        pruning.publish(source, base, MODEL, keep_versions=2, now=now)
        pruning.write_models_config(base, MODEL)


@pytest.mark.parametrize("pin", sorted(PINS))
def test_pushes_keep_other_models_and_pinned_versions(tmp_path, pin):
    base = str(tmp_path / "serving")
    source = make_tree(tmp_path / "src")
    ours = f'config {{ name: "{MODEL}" base_path: "/old/{MODEL}" model_platform: "tensorflow" {PINS[pin]} }}'
    os.makedirs(base)
    with open(os.path.join(base, "models.config"), "w") as f:
        f.write(f"model_config_list {{ {OTHER_MODEL} {ours} }}")
    before = tf_serving_config.read_model_config(os.path.join(base, "models.config"))
    pruning.publish(source, base, MODEL, now=100)  # the version the operator pinned
    for now in range(1000, 1004):
        _push(source, base, now)

    assert pruning.existing_versions(os.path.join(base, MODEL)) == [100, 1002, 1003]  # newest 2 + the pin
    after = tf_serving_config.read_model_config(os.path.join(base, "models.config"))
    other, ours_after = after.model_config_list.config
    assert other == before.model_config_list.config[0]
    expected = before.model_config_list.config[1]
    expected.base_path = os.path.join(os.path.abspath(base), MODEL)  # the Pusher's own field, updated
    assert ours_after == expected
    assert listing(base) == [MODEL, "models.config"]  # no lock or temp files left

    # The operator's own tool (a rollback) changes only this model's entry too.
    tf_serving_config.write_model_config(base, MODEL, versions=[1002])
    rolled_back = tf_serving_config.read_model_config(os.path.join(base, "models.config")).model_config_list
    assert rolled_back.config[0] == other
    assert list(rolled_back.config[1].model_version_policy.specific.versions) == [1002]
    assert dict(rolled_back.config[1].version_labels) == dict(expected.version_labels)


def test_models_config_on_an_object_store_is_merged_too():
    base = f"ram://merge-{os.getpid()}/serving"
    tf.io.gfile.makedirs(base)
    with tf.io.gfile.GFile(f"{base}/models.config", "w") as f:
        f.write(f"model_config_list {{ {OTHER_MODEL} }}")
    pruning.write_models_config(base, MODEL)
    with tf.io.gfile.GFile(f"{base}/models.config") as f:
        config = tf_serving_config.parse_model_config(f.read())
    assert [(e.name, e.base_path) for e in config.model_config_list.config] == [
        ("other", "/srv/other"), (MODEL, f"{base}/{MODEL}")]
    assert config.model_config_list.config[1].model_version_policy.latest.num_versions == 1


def test_published_files_are_readable_by_the_model_server_whatever_the_umask(tmp_path):
    source = make_tree(tmp_path / "src", files=5)
    base = str(tmp_path / "serving")
    previous = os.umask(0o077)
    try:
        _push(source, base, now=1)
    finally:
        os.umask(previous)

    def mode(path):
        return stat.S_IMODE(os.stat(path).st_mode)
    assert mode(base) == mode(os.path.join(base, MODEL)) == 0o755
    assert mode(os.path.join(base, "models.config")) == 0o644
    for directory, dirs, files in os.walk(os.path.join(base, MODEL, "1")):
        assert mode(directory) == 0o755, directory
        for name in files:
            assert mode(os.path.join(directory, name)) == 0o644, name
