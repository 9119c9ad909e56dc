"""Latency and throughput of the local serving process (serving/local_server/), per model.

    python -m benchmarks.serving_bench --model unpruned=output/serving/ctr/<version> \
        [--model pruned=<dir>] --out benchmarks/results/serving

Each model (a pushed SavedModel version folder) is served by its own ``python -m
serving.local_server`` child process, so that the client's threads do not share the server's
interpreter; the clients are the project's own (``serving.rest_client`` / ``serving.grpc_client``,
with request validation on, as in production). For each protocol (REST, gRPC) and batch size (1,
64), ``--threads`` client threads send ``predict_raw`` requests back to back until ``--requests``
requests or ``--seconds`` seconds, whichever comes first, after a short warm-up. Latency is per
request (client side, end to end); throughput is rows per second over the cell's wall time.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List

from benchmarks import results_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_NAME = "ctr"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def newest_version(serving_dir: str) -> str:
    model_dir = os.path.join(serving_dir, MODEL_NAME)
    from serving import model_versions
    newest = model_versions.latest_version_dir(model_dir)
    if newest is None:
        raise SystemExit(f"error: no pushed version under {model_dir}; run `make demo` or pass --model LABEL=DIR")
    return newest


def benchmark_rows(n: int, signature) -> List[dict]:
    """``n`` rows for ``predict_raw`` with every feature the signature asks for."""
    rows = []
    for r in range(n):
        row = {}
        for i, (name, spec) in enumerate(sorted(signature.inputs.items())):
            row[name] = (r * 7 + i) % 100 if spec.dtype == "DT_INT64" else f"{(r * 31 + i) % 1000:08x}"
        rows.append(row)
    return rows


class ServerProcess:
    """``python -m serving.local_server`` on free ports, serving one version folder as version 1."""

    def __init__(self, version_dir: str, log_path: str):
        self.base = tempfile.mkdtemp(prefix="serving-bench-")
        os.makedirs(os.path.join(self.base, MODEL_NAME))
        os.symlink(os.path.abspath(version_dir), os.path.join(self.base, MODEL_NAME, "1"))
        self.rest_port, self.grpc_port = free_port(), free_port()
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.local_server", "--base", self.base, "--model-name", MODEL_NAME,
             "--rest-port", str(self.rest_port), "--grpc-port", str(self.grpc_port)],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        import requests

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"error: the server exited with {self.process.returncode}; see {self.log.name}")
            try:
                status = requests.get(f"http://127.0.0.1:{self.rest_port}/v1/models/{MODEL_NAME}", timeout=2).json()
                if any(s["state"] == "AVAILABLE" for s in status.get("model_version_status", [])):
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.5)
        raise SystemExit(f"error: the server was not ready within {timeout_s:.0f}s; see {self.log.name}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
        shutil.rmtree(self.base, ignore_errors=True)


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100.0 * (len(ordered) - 1))))]


def run_cell(make_client, rows: List[dict], threads: int, max_requests: int, seconds: float) -> Dict:
    """``threads`` clients, each with its own connection, until max_requests in all or ``seconds``."""
    latencies: List[float] = []
    errors: List[str] = []
    lock = threading.Lock()
    issued = [0]
    deadline = [0.0]
    # Bounded: a worker whose warm-up fails breaks the barrier instead of leaving the others waiting.
    start = threading.Barrier(threads + 1, timeout=300)

    def worker():
        client = make_client()
        try:
            try:
                for _ in range(3):  # warm-up: connection, metadata, first-call costs
                    client.predict_raw(rows)
            except Exception as e:
                with lock:
                    errors.append(f"warm-up: {type(e).__name__}: {e}"[:200])
                start.abort()
                return
            try:
                start.wait()
            except threading.BrokenBarrierError:
                return
            while time.monotonic() < deadline[0]:
                with lock:
                    if issued[0] >= max_requests:
                        return
                    issued[0] += 1
                began = time.perf_counter()
                try:
                    client.predict_raw(rows)
                except Exception as e:  # counted, not fatal: the cell reports its error count
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}"[:200])
                    continue
                elapsed = time.perf_counter() - began
                with lock:
                    latencies.append(elapsed)
        finally:
            client.close()

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    deadline[0] = time.monotonic() + 3600  # placeholder until every worker is warm
    try:
        start.wait()
    except threading.BrokenBarrierError:
        for t in pool:
            t.join(10)
        return {"requests": 0, "errors": len(errors), "first_error": errors[0] if errors else "warm-up timed out",
                "wall_s": 0.0, "p50_ms": None, "p99_ms": None, "requests_per_s": 0.0, "rows_per_s": 0.0}
    began = time.monotonic()
    deadline[0] = began + seconds
    for t in pool:
        t.join(seconds + 60)
    wall = time.monotonic() - began
    done = len(latencies)
    return {
        "requests": done, "errors": len(errors), "first_error": errors[0] if errors else None,
        "wall_s": round(wall, 3),
        "p50_ms": round(percentile(latencies, 50) * 1e3, 3) if done else None,
        "p99_ms": round(percentile(latencies, 99) * 1e3, 3) if done else None,
        "requests_per_s": round(done / wall, 1), "rows_per_s": round(done * len(rows) / wall, 1),
    }


def bench_model(label: str, version_dir: str, args, log_dir: str) -> Dict:
    from serving.grpc_client import GrpcClient
    from serving.rest_client import RestClient
    from serving.retry import RetryPolicy

    server = ServerProcess(version_dir, os.path.join(log_dir, f"server-{label}.log"))
    try:
        t0 = time.monotonic()
        server.wait_ready()
        ready_s = time.monotonic() - t0
        retry = RetryPolicy(max_attempts=2)
        rest_url, grpc_target = f"http://127.0.0.1:{server.rest_port}", f"127.0.0.1:{server.grpc_port}"
        with RestClient(rest_url, MODEL_NAME) as probe:
            signature = probe.signatures()["predict_raw"]
        cells = {}
        for protocol in ("rest", "grpc"):
            for batch in args.batches:
                rows = benchmark_rows(batch, signature)
                make = ((lambda: RestClient(rest_url, MODEL_NAME, timeout_s=30, retry=retry)) if protocol == "rest"
                        else (lambda: GrpcClient(grpc_target, MODEL_NAME, timeout_s=30, retry=retry)))
                cell = run_cell(make, rows, args.threads, args.requests, args.seconds)
                cells[f"{protocol}/batch{batch}"] = cell
                print(f"  {label:>10} {protocol:>4} batch {batch:>3}: p50 {cell['p50_ms']} ms, p99 {cell['p99_ms']} ms, "
                      f"{cell['requests_per_s']} req/s, {cell['rows_per_s']} rows/s, {cell['errors']} errors",
                      flush=True)
        return {"version_dir": os.path.abspath(version_dir), "server_ready_s": round(ready_s, 1), "cells": cells}
    finally:
        server.stop()


def report_text(result: Dict) -> str:
    lines = [f"Local serving process (serving/local_server/), predict_raw, {result['config']['threads']} client "
             f"threads, <= {result['config']['requests']} requests or {result['config']['seconds']} s per cell.",
             f"Machine: {result['machine']['cpus']} CPUs, load average {result['machine']['load_average']} at start "
             "(shared with other work: absolute numbers are noisy, compare rows within one run).", ""]
    header = f"{'model':<12}{'protocol':<10}{'batch':>6}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'rows/s':>11}{'errors':>8}"
    lines += [header, "-" * len(header)]
    for label, model in result["models"].items():
        for key, cell in model["cells"].items():
            protocol, batch = key.split("/batch")
            lines.append(f"{label:<12}{protocol:<10}{batch:>6}{cell['p50_ms']:>10}{cell['p99_ms']:>10}"
                         f"{cell['requests_per_s']:>10}{cell['rows_per_s']:>11}{cell['errors']:>8}")
    lines += [""] + result.get("notes", [])
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], metavar="LABEL=DIR",
                        help="a SavedModel version folder to serve (repeatable); default: "
                             "unpruned=<newest version under output/serving/ctr>")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--requests", type=int, default=2000, help="requests per cell, all threads together")
    parser.add_argument("--seconds", type=float, default=10.0, help="time limit per cell")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "serving"),
                        help="writes OUT.json and OUT.txt")
    args = parser.parse_args(argv)
    models = {}
    for spec in args.model or [f"unpruned={newest_version(os.path.join(REPO, 'output', 'serving'))}"]:
        label, sep, path = spec.partition("=")
        if not sep or not os.path.isfile(os.path.join(path, "saved_model.pb")):
            parser.error(f"--model {spec!r}: expected LABEL=DIR with DIR/saved_model.pb")
        models[label] = path
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    result = {
        "config": {"threads": args.threads, "requests": args.requests, "seconds": args.seconds,
                   "batches": args.batches, "signature": "predict_raw", "clients": "serving.rest_client, serving.grpc_client"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average": [round(x, 2) for x in os.getloadavg()]},
        "models": {},
        "notes": [],
    }
    with tempfile.TemporaryDirectory() as logs:
        for label, path in models.items():
            print(f"{label}: {path}", flush=True)
            result["models"][label] = bench_model(label, path, args, logs)
    if "pruned" not in models:
        result["notes"].append("Pruned model: pending (the pruned exporter does not exist yet); rerun with "
                               "--model unpruned=DIR --model pruned=DIR when it does.")
    results_files.write(args.out, result, report_text(result), sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
