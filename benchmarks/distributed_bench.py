"""Training throughput and memory on localhost clusters (issue #21): examples/s of one process, of
MultiWorkerMirroredStrategy with 1 and 2 workers, and of ParameterServerStrategy with 2 parameter
servers (tables split in 2 shards) and 2 workers, at about 1e6 and 1e7 embedding rows; the peak RSS
of every process (tables and their Group Adam slots split across the parameter servers).

    TF_USE_LEGACY_KERAS=1 PYTHONPATH=. .venv/bin/python -m benchmarks.distributed_bench \
        [--sizes 1e6,1e7] [--configs single_xla,single,mwms1,mwms2,ps2] [--steps 60] [--out DIR] [--quick]

Writes <out>/distributed_cpu.json and <out>/distributed_cpu.txt (``--quick``: *_quick.*, a smoke test
with small tables and few steps that never overwrites the committed results).

What a run trains: the Trainer's model (``components.models.build_model``, DNN, hidden [64, 32]) over 4
categorical fields with equal tables (size/4 rows each, embedding_dim 8) and 4 float features, Group
Adam from ``training.make_optimizer`` (lr 0.005, l21 1e-3), compiled by
``training.compile_model`` under the strategy exactly as ``run_fn`` does (tables built under
``components.distributed.sharded_tables``; the ``jit_compile`` that run_fn allows: on for
``single_xla``, off for every other configuration; ``single`` is one process with XLA off, the
like-for-like reference for the cluster runs, which cannot compile). Data: synthetic batches
generated inside tf.data on whichever task reads them (no files; ids skewed to popular rows,
spread over each table), global batch 1024 (per worker 512 with 2 MWMS workers; each parameter-server
worker takes whole batches of 1024). Each run is its own set of processes on localhost ports
(components.local_cluster): a warm-up epoch (tracing; the optimizer's slots), then ``--steps`` timed
steps; examples/s = steps x 1024 / seconds of the timed epoch (measured on the chief / worker 0).

Peak RSS is each process's VmHWM (/proc/<pid>/status) at the end of the run: parameter servers and
workers are read by this driver while they still serve, the training processes read their own.
``bytes_of_tables`` is what the tables and their three Group Adam slots (m, v, z) hold: 4 x rows x 8
x 4 bytes, all in one process for single/MWMS (every MWMS worker holds a full copy), split between
the two parameter servers for ps2.

The machine this runs on may be shared and loaded: the 1-minute load average is recorded before
and after every run, and the table says so.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Dict, List

from benchmarks import results_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ("C1", "C2", "C3", "C4")
INT_FIELDS = ("I1", "I2", "I3", "I4")
BATCH = 1024
DIM = 8
CONFIGS = ("single_xla", "single", "mwms1", "mwms2", "ps2")
CFG = {"model": "dnn", "optimizer": "group_adam", "learning_rate": 0.005, "l1": 0.0, "l2": 0.0, "l21": 1e-3,
       "hidden_units": [64, 32], "embedding_dim": DIM, "embedding_dims": {}}


def vm_hwm_mib(pid="self") -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


# -- inside one task -----------------------------------------------------------------------------------
def make_dataset(rows_per_table: int, batch: int, seed: int):
    """Endless synthetic batches: ids skewed towards popular rows (rank = rows * u^4), popular rows
    spread over the table by a multiplicative hash, labels from a planted rule on two fields."""
    import tensorflow as tf

    def one(step):
        s = tf.stack([tf.cast(seed, tf.int64), step])
        features = {}
        for k, field in enumerate(FIELDS):
            u = tf.random.stateless_uniform([batch], seed=s + [0, 1000 * (k + 1)], dtype=tf.float64)
            rank = tf.cast(tf.floor(rows_per_table * tf.pow(u, 4.0)), tf.int64)
            features[field] = (rank * 2654435761) % rows_per_table
        for k, field in enumerate(INT_FIELDS):
            features[field] = tf.math.log1p(tf.random.stateless_uniform([batch], seed=s + [1, k], maxval=100.0))
        logit = tf.cast(features["C1"] % 7, tf.float32) / 3.0 - 1.0 + 0.3 * features["I1"] - 1.2
        label = tf.cast(tf.random.stateless_uniform([batch], seed=s + [2, 0]) < tf.sigmoid(logit), tf.float32)
        return features, label

    return tf.data.Dataset.range(1 << 40).map(one, num_parallel_calls=2).prefetch(2)


def task_main(args) -> None:
    import tensorflow as tf
    import tf_keras as keras

    from components import distributed, models
    from components.trainer_config import TrainerConfig
    from components.training import compile_model

    config = args.config
    if config.startswith("ps") and distributed.serve_if_cluster_task("parameter_server"):
        return
    rows = int(float(args.size)) // len(FIELDS)
    table_rows = {f: rows for f in FIELDS}
    keras.utils.set_random_seed(0)
    if config.startswith("mwms"):
        strategy = distributed.multi_worker_strategy()
    elif config.startswith("ps"):
        strategy = distributed.parameter_server_strategy()
    else:
        strategy = tf.distribute.get_strategy()
    jit_compile = config == "single_xla"
    built = time.time()
    with strategy.scope(), distributed.sharded_tables(strategy):
        model = models.build_model("dnn", INT_FIELDS, FIELDS, table_rows, embedding_dim=DIM, hidden_units=(64, 32))
        compile_model(model, TrainerConfig(**CFG), jit_compile, **distributed.compile_options(strategy))
    build_s = time.time() - built

    if config.startswith("ps"):
        x = keras.utils.experimental.DatasetCreator(
            lambda ctx: make_dataset(rows, BATCH, 1 + ctx.input_pipeline_id))
    elif config.startswith("mwms"):
        x = keras.utils.experimental.DatasetCreator(
            lambda ctx: make_dataset(rows, ctx.get_per_replica_batch_size(BATCH), 1 + ctx.input_pipeline_id))
    else:
        x = make_dataset(rows, BATCH, 1)

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    timer = Timer()
    model.fit(x, epochs=2, steps_per_epoch=args.steps, callbacks=[timer], verbose=0)
    warmup_s, timed_s = timer.seconds
    task_type, index = distributed.task()
    shards = {}
    for field, table in models.embedding_tables(model).items():
        from optim import sharded
        shards[field] = [{"rows": int(s.shape[0]), "device": s.device} for s in sharded.shards(table)]
    result = {"config": config, "size": args.size, "task": f"{task_type} {index}" if task_type else "single",
              "steps": args.steps, "batch": BATCH, "examples_per_s": round(args.steps * BATCH / timed_s, 1),
              "timed_s": round(timed_s, 2), "warmup_s": round(warmup_s, 2), "build_s": round(build_s, 2),
              "jit_compile": jit_compile, "strategy": type(strategy).__name__, "peak_rss_mib": round(vm_hwm_mib(), 1),
              "table_shards": shards["C1"], "iterations": int(model.optimizer.iterations.numpy())}
    with open(args.result, "w") as f:
        json.dump(result, f)


# -- the driver ------------------------------------------------------------------------------------------
def run_one(config: str, size: str, steps: int, work: str) -> Dict[str, Any]:
    from components.local_cluster import LocalCluster

    os.makedirs(work, exist_ok=True)
    argv = lambda result: [sys.executable, "-m", "benchmarks.distributed_bench", "--task", "--config", config,  # noqa: E731
                           "--size", size, "--steps", str(steps), "--result", result]
    load_before = load_average()
    started = time.time()
    if config.startswith("single"):
        import subprocess
        result = os.path.join(work, "single.json")
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        env.update(TF_USE_LEGACY_KERAS="1", PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
        with open(os.path.join(work, "single.log"), "w") as log:
            code = subprocess.run(argv(result), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=3600).returncode
        main_tasks, results, servers = [("single", 0)], {("single", 0): result}, {}
    else:
        workers = {"mwms1": 1, "mwms2": 2, "ps2": 2}[config]
        ps = 2 if config == "ps2" else 0
        cluster = LocalCluster(workers=workers, ps=ps, chief=ps > 0, log_dir=work)
        results = {}
        for role, index in cluster.tasks:
            results[(role, index)] = os.path.join(work, f"{role}-{index}.json")
            cluster.start(role, index, argv(results[(role, index)]))
        main_tasks = [("chief", 0)] if ps else [("worker", i) for i in range(workers)]
        code = 0
        for task in main_tasks:
            code = code or cluster.wait(*task, timeout=3600)
        servers = {t: round(vm_hwm_mib(cluster.processes[t].pid), 1) for t in cluster.tasks if t not in main_tasks}
        cluster.stop()
    out: Dict[str, Any] = {"config": config, "size": size, "exit_code": code, "wall_s": round(time.time() - started, 1),
                           "load_before": load_before, "load_after": load_average()}
    if code != 0:
        logs = [os.path.join(work, n) for n in os.listdir(work) if n.endswith(".log")]
        out["error"] = "\n".join(open(p, errors="replace").read()[-1500:] for p in logs)
        return out
    tasks = {}
    for task in main_tasks:
        with open(results[task]) as f:
            tasks[f"{task[0]} {task[1]}"] = json.load(f)
    for task, rss in servers.items():
        tasks[f"{task[0]} {task[1]}"] = {"peak_rss_mib": rss}
    lead = tasks[f"{main_tasks[0][0]} {main_tasks[0][1]}"]
    out.update(examples_per_s=lead["examples_per_s"], warmup_s=lead["warmup_s"], timed_s=lead["timed_s"],
               steps=lead["steps"], jit_compile=lead["jit_compile"], strategy=lead["strategy"],
               table_shards=lead["table_shards"], tasks=tasks)
    return out


def bytes_of_tables(size: str) -> int:
    return 4 * int(float(size)) * DIM * 4  # weights + m + v + z, float32


def render(report: Dict[str, Any]) -> str:
    lines = [f"distributed_bench: {report['machine']}, TF {report['tensorflow']}, {report['date']}",
             f"global batch {BATCH}, {report['steps']} timed steps after a warm-up epoch; DNN over 4 tables "
             f"(dim {DIM}) + 4 floats, Group Adam; load average (1 min) before -> after each run", ""]
    header = f"{'rows':>6} {'config':<11} {'examples/s':>10} {'vs single':>9} {'warm-up s':>9} {'load':>11}  peak RSS MiB per process"
    lines.append(header)
    lines.append("-" * len(header))
    for size in report["sizes"]:
        runs = {r["config"]: r for r in report["runs"] if r["size"] == size}
        base = runs.get("single", {}).get("examples_per_s")
        for config in report["configs"]:
            r = runs.get(config)
            if r is None:
                continue
            if r.get("exit_code"):
                lines.append(f"{size:>6} {config:<11} FAILED (exit {r['exit_code']})")
                continue
            ratio = f"{r['examples_per_s'] / base:.2f}x" if base else "-"
            rss = ", ".join(f"{task} {t['peak_rss_mib']:.0f}" for task, t in r["tasks"].items())
            lines.append(f"{size:>6} {config:<11} {r['examples_per_s']:>10.0f} {ratio:>9} {r['warmup_s']:>9.1f} "
                         f"{r['load_before']:>5.1f}->{r['load_after']:<5.1f}  {rss}")
        lines.append(f"{'':>6} tables + Group Adam slots: {bytes_of_tables(size) / 2**20:.0f} MiB in all; "
                     f"ps2 shards of each table: {runs.get('ps2', {}).get('table_shards')}")
        lines.append("")
    lines += report.get("notes", [])
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--sizes", default="1e6,1e7")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
    parser.add_argument("--work", default=None, help="scratch folder (default: a new temp folder)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.task:
        task_main(args)
        return 0
    import tempfile

    import tensorflow as tf
    if args.quick:
        args.sizes, args.steps = "4e4", 5
    sizes = args.sizes.split(",")
    configs = [c for c in args.configs.split(",") if c]
    work = args.work or tempfile.mkdtemp(prefix="distributed-bench-")
    report: Dict[str, Any] = {"machine": f"{platform.node()} {os.cpu_count()} CPUs", "tensorflow": tf.__version__,
                              "date": time.strftime("%Y-%m-%d %H:%M"), "sizes": sizes, "configs": configs,
                              "steps": args.steps, "batch": BATCH, "runs": []}
    for size in sizes:
        for config in configs:
            print(f"[distributed_bench] {size} {config} ...", flush=True)
            run = run_one(config, size, args.steps, os.path.join(work, f"{size}-{config}"))
            report["runs"].append(run)
            print(f"[distributed_bench] {size} {config}: {run.get('examples_per_s', 'FAILED')} examples/s, "
                  f"load {run['load_before']} -> {run['load_after']}", flush=True)
    name = "distributed_cpu" + ("_quick" if args.quick else "")
    results_files.write(os.path.join(args.out, name), report, render(report))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
