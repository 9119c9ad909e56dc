"""`make demo` timed per node (issue #17: "make demo: the Trainer node takes <= 30 s").

    TF_USE_LEGACY_KERAS=1 PYTHONPATH=. .venv/bin/python -m benchmarks.demo_run \
        [--repeats 2] [--out benchmarks/results/demo_run]

Each run is `make demo`'s own command (read from the Makefile's ``demo`` target) with ``--output`` a
new folder: what a new user's first `make demo` does (no pushed model yet, so no warm start and no
baseline). Per node: the wall time ML Metadata holds for its execution (created -> last updated);
per run: the pipeline's (the run summary's ``duration_s``), the whole process's, and the first node's
start (what a user waits before the pipeline shows any progress: Python start-up, imports, the
generated data). These are absolute times, and these machines' speed changes from day to day: the
memory probe (``benchmarks/machine_probe.py``) taken before each run is reported beside it.

``--baseline DIR`` runs a checkout of another revision too, with the same interpreter, alternating
with this one (this, baseline, baseline, this, ...), and reports its medians and this / baseline.
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

from benchmarks import machine_probe, results_files
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


def run_once(command: Sequence[str], output: str, log_path: str, timeout_s: float,
             repo: str = REPO) -> Dict[str, Any]:
    """One demo run of the checkout `repo` into the new folder `output`: its status, run id, node and
    run wall times."""
    from pipelines.config import PipelineConfig

    probe = machine_probe.memory_bandwidth()
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=repo)
    started = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.run([*command, "--output", output], cwd=repo, env=env, stdout=log,
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
        "first_node_s": round(min(w["start"] for w in windows.values()) - started, 2) if windows else None,
        "pipeline_s": summary.get("duration_s"),
        "nodes": {name: {"wall_s": round(w["end"] - w["start"], 2), "state": w["state"]}
                  for name, w in sorted(windows.items())},
        "machine": probe,
    }


def _median(values: Sequence[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def evaluate(runs: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Median node and run times over the succeeded runs of this checkout, and the Trainer node's
    target; with baseline runs, their medians and this / baseline."""
    baseline = [r for r in runs if r.get("checkout") == "baseline"]
    result = _medians([r for r in runs if r.get("checkout") != "baseline"])
    if baseline:
        base = _medians(baseline)
        result["baseline"] = {key: base[key] for key in
                              ("runs_succeeded", "node_median_s", "first_node_median_s", "pipeline_median_s",
                               "process_median_s")}
        result["ratio_to_baseline"] = {
            key: round(result[key] / base[key], 3) for key in ("first_node_median_s", "pipeline_median_s",
                                                               "process_median_s")
            if result[key] and base[key]}
    return result


def _medians(runs: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    ok = [r for r in runs if r["exit_code"] == 0 and r["status"] == "succeeded"]
    nodes = sorted({n for r in ok for n in r["nodes"]})
    medians = {n: statistics.median(r["nodes"][n]["wall_s"] for r in ok if n in r["nodes"]) for n in nodes}
    trainer = medians.get("Trainer")
    return {
        "runs_succeeded": len(ok),
        "node_median_s": medians,
        "first_node_median_s": _median([r.get("first_node_s") for r in ok]),
        "pipeline_median_s": statistics.median(r["pipeline_s"] for r in ok) if ok else None,
        "process_median_s": statistics.median(r["process_s"] for r in ok) if ok else None,
        "trainer_node_target_s": TRAINER_NODE_TARGET_S,
        "trainer_node_met": None if trainer is None else trainer <= TRAINER_NODE_TARGET_S,
    }


def _seconds(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def report_text(record: Dict[str, Any]) -> str:
    runs, result = record["runs"], record["result"]
    base = result.get("baseline")
    labels, count = [], {}
    for r in runs:
        label = "base" if r.get("checkout") == "baseline" else "run"
        count[label] = count.get(label, 0) + 1
        labels.append(f"{label} {count[label]}")
    header = f"{'node (wall s)':<22}" + "".join(f"{label:>9}" for label in labels) + f"{'median':>9}"
    if base:
        header += f"{'baseline':>10}{'ratio':>8}"
    lines = [
        "make demo per node (benchmarks/demo_run.py): a new output folder per run, the Makefile's demo command",
        f"Command: {record['command']}",
        f"Each run: {record['demo_command']}",
        f"{record['machine']}; {len(runs)} runs, one after another"
        + (f"; run = this checkout, base = the baseline {record['baseline']}" if base else ""),
        "",
        header,
        "-" * len(header),
    ]

    def row(label: str, values: List[Optional[float]], median: Optional[float],
            base_median: Optional[float] = None) -> str:
        line = f"{label:<22}" + "".join(f"{_seconds(v):>9}" for v in values) + f"{_seconds(median):>9}"
        if base:
            ratio = f"{median / base_median:.2f}x" if median and base_median else "-"
            line += f"{_seconds(base_median):>10}{ratio:>8}"
        return line

    for node, median in sorted(result["node_median_s"].items(), key=lambda kv: -kv[1]):
        lines.append(row(node, [r["nodes"].get(node, {}).get("wall_s") for r in runs], median,
                         base["node_median_s"].get(node) if base else None))
    for label, key in (("first node starts", "first_node"), ("pipeline", "pipeline"), ("process", "process")):
        lines.append(row(label, [r.get(f"{key}_s") for r in runs], result[f"{key}_median_s"],
                         base[f"{key}_median_s"] if base else None))
    lines.append("")
    lines.append("pipeline: the run summary's duration_s; process: the whole command, Python and TensorFlow "
                 "start-up included; first node starts: from the command's start to the first node's; a node: "
                 "its ML Metadata execution, created -> last updated" + ("; ratio: median / baseline's median"
                                                                          if base else ""))
    lines += probe_and_failure_lines(runs)
    met = result["trainer_node_met"]
    lines.append("")
    lines.append(f"target: Trainer node median {_seconds(result['node_median_s'].get('Trainer'))} s "
                 f"(<= {result['trainer_node_target_s']:.0f} s: "
                 f"{'met' if met else 'NOT met' if met is not None else 'no run succeeded'})")
    return "\n".join(lines) + "\n"


def probe_and_failure_lines(runs: List[Dict[str, Any]]) -> List[str]:
    """A report's lines on every run: the memory probe taken before it, and the runs that failed."""
    lines = ["memory probe before each run (stream copy / random 64-byte rows, GB/s): " + ", ".join(
        f"{r['machine']['stream_gb_per_s']:.1f} / {r['machine']['random_64b_rows_gb_per_s']:.2f}" for r in runs)]
    failed = [f"run {i + 1}: exit {r['exit_code']}, status {r['status']}" for i, r in enumerate(runs)
              if r["exit_code"] != 0 or r["status"] != "succeeded"]
    if failed:
        lines.append("failed: " + "; ".join(failed))
    return lines


def checkout_label(path: str) -> str:
    """`path` and the commit checked out there (for the report)."""
    done = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return f"{path} at {done.stdout.strip()}" if done.returncode == 0 else path


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "demo_run"))
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--keep", metavar="DIR", help="run in DIR and keep its outputs and logs")
    parser.add_argument("--baseline", metavar="CHECKOUT",
                        help="a checkout of another revision to run too, alternating with this one")
    args = parser.parse_args(argv)
    checkouts = {"this": (REPO, demo_command())}
    if args.baseline:
        baseline = os.path.abspath(args.baseline)
        if not os.path.isdir(os.path.join(baseline, "pipelines")):
            raise SystemExit(f"--baseline {args.baseline}: not a sparsectr checkout (no pipelines/ folder)")
        checkouts["baseline"] = (baseline, demo_command(os.path.join(baseline, "Makefile")))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or tmp
        os.makedirs(work, exist_ok=True)
        for i in range(args.repeats):
            # this, baseline, then baseline, this: neither goes first more often.
            for name in (list(checkouts) if i % 2 == 0 else list(checkouts)[::-1]):
                repo, command = checkouts[name]
                tag = f"{'run' if name == 'this' else 'base'}-{i + 1}"
                run = dict(run_once(command, os.path.join(work, tag), os.path.join(work, f"{tag}.log"), args.timeout,
                                    repo=repo), checkout=name)
                runs.append(run)
                print(f"{tag}: {run['status']}, Trainer node "
                      f"{_seconds(run['nodes'].get('Trainer', {}).get('wall_s'))} s, first node at "
                      f"{_seconds(run['first_node_s'])} s, pipeline {_seconds(run['pipeline_s'])} s", flush=True)
    record = {
        "command": benchmark_command("demo_run", argv),
        "demo_command": shown_command(checkouts["this"][1]) + " --output <new folder>",
        "machine": f"{os.cpu_count()} CPUs ({platform.machine()})",
        "runs": runs,
        "result": evaluate(runs),
    }
    if args.baseline:
        record["baseline"] = checkout_label(checkouts["baseline"][0])
    results_files.write(args.out, record, report_text(record), sort_keys=True)
    result = record["result"]
    succeeded = result["runs_succeeded"] + result.get("baseline", {}).get("runs_succeeded", 0)
    return 0 if succeeded == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
