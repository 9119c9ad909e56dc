"""Transform with and without materializing, end to end (issue #18): the whole pipeline per setting.

    TF_USE_LEGACY_KERAS=1 PYTHONPATH=. .venv/bin/python -m benchmarks.transform_materialize \
        [--rows 1000000] [--repeats 2] [--out benchmarks/results/transform_materialize]

`data.materialize_transformed` moves the per-row transform from Transform (once, writing a second
copy of the data) to the Trainer (once per epoch, per batch). Which is faster depends on the epochs the
Trainer runs, so this runs `make demo`'s own command at ``--rows`` generated rows with each setting,
the settings alternating (true, false, then false, true, ...) so that the machine's drift falls on
both. Per run: the Transform and Trainer nodes' wall time (ML Metadata), their sum, the whole
pipeline's, the epochs the Trainer ran and its fit time, the eval AUC and the bytes of transformed
examples Transform wrote.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence

from benchmarks import results_files
from benchmarks.demo_run import benchmark_command, demo_command, probe_and_failure_lines, run_once, shown_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = (True, False)


def _label(materialize: bool) -> str:
    return "materialize" if materialize else "no_materialize"


def run_order(repeats: int) -> List[bool]:
    """The settings in run order: each repeat runs both, the first setting alternating."""
    order: List[bool] = []
    for i in range(repeats):
        order.extend(SETTINGS if i % 2 == 0 else SETTINGS[::-1])
    return order


def _tree_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def run_facts(output: str) -> Dict[str, Any]:
    """What the run's summary and output folder say: epochs, fit time, eval AUC, transformed bytes."""
    path = os.path.join(output, "summary.json")
    summary = json.load(open(path)) if os.path.isfile(path) else {}
    training, evaluation = summary.get("training") or {}, summary.get("evaluation") or {}
    transformed = os.path.join(output, "pipeline_root", "Transform", "transformed_examples")
    return {"epochs": training.get("epochs"), "fit_s": training.get("fit_seconds"),
            "eval_auc": evaluation.get("auc"),
            "transformed_bytes": _tree_bytes(transformed) if os.path.isdir(transformed) else 0}


def evaluate(runs: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Per setting, medians over its succeeded runs; and not materializing / materializing."""
    per: Dict[str, Dict[str, Any]] = {}
    for materialize in SETTINGS:
        ok = [r for r in runs if r["materialize"] == materialize and r["exit_code"] == 0
              and r["status"] == "succeeded"]

        def median(get):
            values = [v for v in (get(r) for r in ok) if v is not None]
            return statistics.median(values) if values else None

        per[_label(materialize)] = {
            "runs_succeeded": len(ok),
            "transform_s": median(lambda r: r["nodes"].get("Transform", {}).get("wall_s")),
            "trainer_s": median(lambda r: r["nodes"].get("Trainer", {}).get("wall_s")),
            "transform_trainer_s": median(lambda r: r["nodes"]["Transform"]["wall_s"] + r["nodes"]["Trainer"]["wall_s"]
                                          if "Transform" in r["nodes"] and "Trainer" in r["nodes"] else None),
            "pipeline_s": median(lambda r: r["pipeline_s"]),
            "epochs": median(lambda r: r["epochs"]),
            "fit_s": median(lambda r: r["fit_s"]),
            "eval_auc": median(lambda r: r["eval_auc"]),
            "transformed_bytes": median(lambda r: r["transformed_bytes"]),
        }
    on, off = per[_label(True)], per[_label(False)]
    ratios = {key: (round(off[key] / on[key], 3) if off[key] is not None and on[key] else None)
              for key in ("transform_s", "trainer_s", "transform_trainer_s", "pipeline_s")}
    return {"settings": per, "no_materialize_over_materialize": ratios,
            "runs_succeeded": sum(p["runs_succeeded"] for p in per.values())}


def _cell(value: Optional[float], spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def report_text(record: Dict[str, Any]) -> str:
    runs, result = record["runs"], record["result"]
    lines = [
        "Transform with and without materializing, end to end (benchmarks/transform_materialize.py)",
        f"Command: {record['command']}",
        f"Each run: {record['demo_command']}",
        f"{record['machine']}; {len(runs)} runs, one after another, the settings alternating",
        "",
        f"{'run':<5}{'data.materialize_transformed':<30}{'Transform s':>12}{'Trainer s':>11}{'sum s':>8}"
        f"{'pipeline s':>12}{'epochs':>8}{'fit s':>8}{'eval AUC':>10}{'transformed MB':>16}  status",
        "-" * 126,
    ]
    for i, r in enumerate(runs):
        transform = r["nodes"].get("Transform", {}).get("wall_s")
        trainer = r["nodes"].get("Trainer", {}).get("wall_s")
        total = transform + trainer if transform is not None and trainer is not None else None
        lines.append(f"{i + 1:<5}{str(r['materialize']).lower():<30}{_cell(transform):>12}{_cell(trainer):>11}"
                     f"{_cell(total):>8}{_cell(r['pipeline_s']):>12}{_cell(r['epochs'], 'd'):>8}"
                     f"{_cell(r['fit_s']):>8}{_cell(r['eval_auc'], '.4f'):>10}"
                     f"{_cell(r['transformed_bytes'] / 2**20):>16}  {r['status']}")
    lines.append("")
    lines.append("median per setting")
    for label, p in result["settings"].items():
        lines.append(f"  {label:<16} Transform {_cell(p['transform_s'])} s + Trainer {_cell(p['trainer_s'])} s = "
                     f"{_cell(p['transform_trainer_s'])} s; pipeline {_cell(p['pipeline_s'])} s; "
                     f"{_cell(p['epochs'], 'g')} epochs, fit {_cell(p['fit_s'])} s; eval AUC "
                     f"{_cell(p['eval_auc'], '.4f')}; transformed examples "
                     f"{_cell((p['transformed_bytes'] or 0) / 2**20)} MB ({p['runs_succeeded']} runs)")
    ratios = result["no_materialize_over_materialize"]
    lines.append("not materializing / materializing: " + ", ".join(
        f"{key} {_cell(value, '.2f')}x" for key, value in ratios.items()))
    lines.append("")
    lines.append("a node: its ML Metadata execution, created -> last updated; sum: Transform + Trainer; pipeline: "
                 "the run summary's duration_s; fit s: the Trainer's model.fit (training.json); transformed MB: "
                 "Transform's transformed_examples artifact on disk")
    lines += probe_and_failure_lines(runs)
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="generated rows per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "transform_materialize"))
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument("--keep", metavar="DIR", help="run in DIR and keep its outputs and logs")
    args = parser.parse_args(argv)
    command = demo_command() + ["--rows", str(args.rows)]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or tmp
        os.makedirs(work, exist_ok=True)
        for i, materialize in enumerate(run_order(args.repeats)):
            config = os.path.join(work, f"{_label(materialize)}.yaml")
            with open(config, "w") as f:
                f.write(f"data:\n  materialize_transformed: {str(materialize).lower()}\n")
            output = os.path.join(work, f"run-{i + 1}-{_label(materialize)}")
            run = run_once(command + ["--config", config], output, output + ".log", args.timeout)
            run.update(materialize=materialize, **run_facts(output))
            runs.append(run)
            print(f"run {i + 1} ({_label(materialize)}): {run['status']}, Transform "
                  f"{_cell(run['nodes'].get('Transform', {}).get('wall_s'))} s, Trainer "
                  f"{_cell(run['nodes'].get('Trainer', {}).get('wall_s'))} s, pipeline {_cell(run['pipeline_s'])} s",
                  flush=True)
    record = {
        "command": benchmark_command("transform_materialize", argv),
        "demo_command": shown_command(command)
                        + " --config <data.materialize_transformed: true|false> --output <new folder>",
        "machine": f"{os.cpu_count()} CPUs ({platform.machine()})",
        "rows": args.rows,
        "runs": runs,
        "result": evaluate(runs),
    }
    results_files.write(args.out, record, report_text(record), sort_keys=True)
    return 0 if record["result"]["runs_succeeded"] == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
