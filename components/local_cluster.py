"""A TF cluster as processes on localhost ports, one ``TF_CONFIG`` each (what a TFJob gives its pods).

    cluster = LocalCluster(workers=2, ps=2, chief=True)
    cluster.start_all([sys.executable, "-m", "components.trainer_job", spec_path])
    rc = cluster.wait("chief", 0, timeout=600)
    cluster.stop()

Each process gets ``TF_CONFIG`` with the whole cluster and its own task, its output in
``<log_dir>/<type>-<index>.log``. Used by the tests and benchmarks/distributed_bench.py.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_ports(count: int) -> List[int]:
    """`count` distinct TCP ports free on localhost now (held open together while picking)."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("localhost", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


class LocalCluster:
    def __init__(self, workers: int, ps: int = 0, chief: bool = False, log_dir: Optional[str] = None):
        roles = ([("chief", 0)] if chief else []) + [("worker", i) for i in range(workers)] + \
                [("ps", i) for i in range(ps)]
        ports = free_ports(len(roles))
        self.spec: Dict[str, List[str]] = {}
        for (role, _), port in zip(roles, ports):
            self.spec.setdefault(role, []).append(f"localhost:{port}")
        self.tasks: List[Tuple[str, int]] = roles
        self.processes: Dict[Tuple[str, int], subprocess.Popen] = {}
        self.log_dir = log_dir
        self._logs = {}

    def tf_config(self, role: str, index: int) -> str:
        return json.dumps({"cluster": self.spec, "task": {"type": role, "index": index}})

    def env(self, role: str, index: int, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        env = dict(os.environ, TF_CONFIG=self.tf_config(role, index), TF_USE_LEGACY_KERAS="1",
                   PYTHONPATH=REPO_ROOT + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""),
                   TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"), PYTHONUNBUFFERED="1")
        env.update(extra or {})
        return env

    def log_path(self, role: str, index: int) -> Optional[str]:
        return os.path.join(self.log_dir, f"{role}-{index}.log") if self.log_dir else None

    def start(self, role: str, index: int, argv: Sequence[str], env: Optional[Dict[str, str]] = None):
        path = self.log_path(role, index)
        out = open(path, "w") if path else subprocess.DEVNULL
        self._logs[(role, index)] = out
        process = subprocess.Popen(list(argv), cwd=REPO_ROOT, env=self.env(role, index, env), stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[(role, index)] = process
        return process

    def start_all(self, argv: Sequence[str], env: Optional[Dict[str, str]] = None, order=("ps", "worker", "chief")):
        for role in order:
            for r, index in self.tasks:
                if r == role:
                    self.start(r, index, argv, env)

    def wait(self, role: str, index: int, timeout: float) -> Optional[int]:
        """The task's exit code, or None if it still runs after `timeout` seconds."""
        try:
            return self.processes[(role, index)].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self, role: str, index: int) -> None:
        """SIGKILL one task (a crash: no cleanup, no goodbye to its peers)."""
        process = self.processes[(role, index)]
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def output(self, role: str, index: int) -> str:
        path = self.log_path(role, index)
        if not path or not os.path.exists(path):
            return ""
        with open(path, errors="replace") as f:
            return f.read()

    def stop(self, grace: float = 5.0) -> None:
        """Ends every task still running: SIGTERM, then SIGKILL after `grace` seconds."""
        for process in self.processes.values():
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + grace
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()
        for out in self._logs.values():
            if out is not subprocess.DEVNULL:
                out.close()
        self._logs.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def python_module(module: str, *args: str) -> List[str]:
    return [sys.executable, "-m", module, *args]
