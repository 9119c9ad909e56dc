"""`make demo` timed per node (issue #17: "make demo: the Trainer node takes <= 30 s").

    TF_USE_LEGACY_KERAS=1 PYTHONPATH=. .venv/bin/python -m benchmarks.demo_run \
        [--repeats 2] [--out benchmarks/results/demo_run]

Each run is `make demo`'s own command (read from the Makefile's ``demo`` target) with ``--output`` a
new folder: what a new user's first `make demo` does (no pushed model yet, so no warm start and no
baseline). Per node: the wall time ML Metadata holds for its execution (created -> last updated);
per run: the pipeline's (the run summary's ``duration_s``) and the whole process's, start-up
included. These are absolute times, and these machines' speed changes from day to day: the memory
probe (``benchmarks/machine_probe.py``) taken before each run is reported beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

from benchmarks import machine_probe
from benchmarks.scale_run import stage_windows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER_NODE_TARGET_S = 30.0


def demo_command(makefile: str = os.path.join(REPO, "Makefile")) -> List[str]:
    """The Makefile's ``demo`` recipe as an argv: ``$(PY)`` this interpreter, ``$(ARGS)`` none."""
    with open(makefile) as f:
        match = re.search(r"^demo:.*\n\t(.+)$", f.read(), re.MULTILINE)
    if not match:
        raise SystemExit(f"{makefile}: no one-line 'demo' recipe")
    recipe = match.group(1).replace("$(ARGS)", "").strip()
    if not recipe.startswith("$(PY) "):
        raise SystemExit(f"{makefile}: the demo recipe does not start with $(PY): {recipe!r}")
    return [sys.executable] + shlex.split(recipe[len("$(PY) "):])


def shown_command(command: Sequence[str]) -> str:
    """`command` as a report shows it: this checkout's interpreter by its relative path."""
    shown = [os.path.relpath(command[0], REPO) if command[0].startswith(REPO) else "python"] + list(command[1:])
    return " ".join(shlex.quote(a) for a in shown)


def benchmark_command(module: str, argv: Optional[Sequence[str]]) -> str:
    """The command line that ran `benchmarks.<module>` with `argv` (None: this process's)."""
    return (f"TF_USE_LEGACY_KERAS=1 PYTHONPATH=. python -m benchmarks.{module} "
            + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)))


def write_report(record: Dict[str, Any], out: str, text: str) -> None:
    """`record` to OUT.json and its report `text` to OUT.txt, the text printed too."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    with open(out + ".txt", "w") as f:
        f.write(text)
    print(text, end="")


def run_once(command: Sequence[str], output: str, log_path: str, timeout_s: float) -> Dict[str, Any]:
    """One demo run into the new folder `output`: its status, run id, node and run wall times."""
    from pipelines.config import PipelineConfig

    probe = machine_probe.memory_bandwidth()
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=REPO)
    started = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.run([*command, "--output", output], cwd=REPO, env=env, stdout=log,
                              stderr=subprocess.STDOUT, timeout=timeout_s)
    process_s = time.time() - started
    summary_path = os.path.join(output, "summary.json")
    summary = json.load(open(summary_path)) if os.path.isfile(summary_path) else {}
    config = PipelineConfig(output_dir=output)
    windows = stage_windows(config.metadata_sqlite, config.pipeline_name, summary.get("run_id"))
    return {
        "exit_code": proc.returncode,
        "status": summary.get("status"),
        "run_id": summary.get("run_id"),
        "process_s": round(process_s, 2),
        "pipeline_s": summary.get("duration_s"),
        "nodes": {name: {"wall_s": round(w["end"] - w["start"], 2), "state": w["state"]}
                  for name, w in sorted(windows.items())},
        "machine": probe,
    }


def evaluate(runs: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Median node and run times over the succeeded runs, and the Trainer node's target."""
    ok = [r for r in runs if r["exit_code"] == 0 and r["status"] == "succeeded"]
    nodes = sorted({n for r in ok for n in r["nodes"]})
    medians = {n: statistics.median(r["nodes"][n]["wall_s"] for r in ok if n in r["nodes"]) for n in nodes}
    trainer = medians.get("Trainer")
    return {
        "runs_succeeded": len(ok),
        "node_median_s": medians,
        "pipeline_median_s": statistics.median(r["pipeline_s"] for r in ok) if ok else None,
        "process_median_s": statistics.median(r["process_s"] for r in ok) if ok else None,
        "trainer_node_target_s": TRAINER_NODE_TARGET_S,
        "trainer_node_met": None if trainer is None else trainer <= TRAINER_NODE_TARGET_S,
    }


def _seconds(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def report_text(record: Dict[str, Any]) -> str:
    runs, result = record["runs"], record["result"]
    lines = [
        "make demo per node (benchmarks/demo_run.py): a new output folder per run, the Makefile's demo command",
        f"Command: {record['command']}",
        f"Each run: {record['demo_command']}",
        f"{record['machine']}; {len(runs)} runs, one after another",
        "",
        f"{'node (wall s)':<22}" + "".join(f"{'run ' + str(i + 1):>9}" for i in range(len(runs))) + f"{'median':>9}",
        "-" * (22 + 9 * (len(runs) + 1)),
    ]
    for node, median in sorted(result["node_median_s"].items(), key=lambda kv: -kv[1]):
        cells = "".join(f"{_seconds(r['nodes'].get(node, {}).get('wall_s')):>9}" for r in runs)
        lines.append(f"{node:<22}{cells}{_seconds(median):>9}")
    for label, key, median in (("pipeline", "pipeline_s", result["pipeline_median_s"]),
                               ("process", "process_s", result["process_median_s"])):
        lines.append(f"{label:<22}" + "".join(f"{_seconds(r[key]):>9}" for r in runs) + f"{_seconds(median):>9}")
    lines.append("")
    lines.append("pipeline: the run summary's duration_s; process: the whole command, Python and TensorFlow "
                 "start-up included; a node: its ML Metadata execution, created -> last updated")
    lines.append("memory probe before each run (stream copy / random 64-byte rows, GB/s): " + ", ".join(
        f"{r['machine']['stream_gb_per_s']:.1f} / {r['machine']['random_64b_rows_gb_per_s']:.2f}" for r in runs))
    failed = [f"run {i + 1}: exit {r['exit_code']}, status {r['status']}" for i, r in enumerate(runs)
              if r["exit_code"] != 0 or r["status"] != "succeeded"]
    if failed:
        lines.append("failed: " + "; ".join(failed))
    met = result["trainer_node_met"]
    lines.append("")
    lines.append(f"target: Trainer node median {_seconds(result['node_median_s'].get('Trainer'))} s "
                 f"(<= {result['trainer_node_target_s']:.0f} s: "
                 f"{'met' if met else 'NOT met' if met is not None else 'no run succeeded'})")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "demo_run"))
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--keep", metavar="DIR", help="run in DIR and keep its outputs and logs")
    args = parser.parse_args(argv)
    command = demo_command()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or tmp
        os.makedirs(work, exist_ok=True)
        for i in range(args.repeats):
            run = run_once(command, os.path.join(work, f"run-{i + 1}"), os.path.join(work, f"run-{i + 1}.log"),
                           args.timeout)
            runs.append(run)
            print(f"run {i + 1}: {run['status']}, Trainer node {_seconds(run['nodes'].get('Trainer', {}).get('wall_s'))} s, "
                  f"pipeline {_seconds(run['pipeline_s'])} s", flush=True)
    record = {
        "command": benchmark_command("demo_run", argv),
        "demo_command": shown_command(command) + " --output <new folder>",
        "machine": f"{os.cpu_count()} CPUs ({platform.machine()})",
        "runs": runs,
        "result": evaluate(runs),
    }
    write_report(record, args.out, report_text(record))
    return 0 if record["result"]["runs_succeeded"] == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
