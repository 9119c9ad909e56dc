"""What setting up the pipeline's Beam executors costs on a local run, with and without TFX's sdist.

    TF_USE_LEGACY_KERAS=1 PYTHONPATH=. .venv/bin/python -m benchmarks.beam_executor_setup \
        [--repeats 3] [--out benchmarks/results/beam_executor_setup]

Every Beam executor of the pipeline (ClickLogExampleGen, StatisticsGen, Transform, the Evaluator:
the classes of their components' EXECUTOR_SPEC, as LocalDagRunner constructs them) is constructed
with the local run's Beam args (the ``multiprocessing`` and ``inmemory`` presets alternate), once by
TFX's own constructor (``tfx_sdist``: it copies the installed TFX and runs ``setup.py sdist`` for
remote workers) and once as the classes are (``no_sdist``: ``components.beam_dependencies``, which
every local run and every Kubeflow Beam step goes through). The two alternate in order, per executor
and repeat, so that load from other work biases neither. Writes <out>.json and <out>.txt: seconds
per construction (median over the repeats) and, per local run, the sum over the four executors.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

from benchmarks import results_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("tfx_sdist", "no_sdist")
PRESETS = ("multiprocessing", "inmemory")


def beam_executor_classes():
    """{component name: executor class} of the pipeline's Beam components."""
    from components.click_log_example_gen.component import ClickLogExampleGen
    from components.fast_statistics import StatisticsGen
    from components.fast_transform import Transform
    from components.gates import BaselineEvaluator
    return {c.__name__: c.EXECUTOR_SPEC.executor_class
            for c in (ClickLogExampleGen, StatisticsGen, Transform, BaselineEvaluator)}


def construct(executor_class, beam_args, mode):
    """Seconds to construct `executor_class` with `beam_args` in `mode`, and whether it got an sdist."""
    from components.beam_dependencies import NoSdistOnDirectRunner
    context = executor_class.Context(beam_pipeline_args=list(beam_args), tmp_dir=tempfile.mkdtemp())
    started = time.perf_counter()
    if mode == "tfx_sdist":  # the class's TFX parent constructs it, as TFX's own executor would be
        executor = executor_class.__new__(executor_class)
        super(NoSdistOnDirectRunner, executor).__init__(context)
    else:
        executor = executor_class(context)
    seconds = time.perf_counter() - started
    return seconds, any(a.startswith("--extra_package") for a in executor._beam_pipeline_args)


def measure(repeats):
    from pipelines.config import BEAM_PRESETS
    runs = []
    for repeat in range(repeats):
        for i, (name, cls) in enumerate(beam_executor_classes().items()):
            preset = PRESETS[(repeat + i) % len(PRESETS)]
            order = MODES if (repeat + i) % 2 == 0 else MODES[::-1]
            for mode in order:
                seconds, sdist = construct(cls, BEAM_PRESETS[preset], mode)
                runs.append({"executor": name, "mode": mode, "preset": preset, "repeat": repeat,
                             "seconds": round(seconds, 4), "sdist": sdist})
    return runs


def summarize(runs):
    names = list(dict.fromkeys(r["executor"] for r in runs))
    table = {name: {mode: statistics.median(r["seconds"] for r in runs
                                            if r["executor"] == name and r["mode"] == mode)
                    for mode in MODES} for name in names}
    totals = {mode: sum(table[name][mode] for name in names) for mode in MODES}
    return table, totals


def text(record):
    table, totals = record["median_seconds"], record["total_seconds"]
    lines = [
        "Constructing the pipeline's Beam executors with the local run's Beam args (DirectRunner): "
        "TFX's tfx_ephemeral sdist vs none",
        f"{record['machine']}; 1-min load average {record['load_before']} before, {record['load_after']} "
        f"after; memory bandwidth {record['memory_bandwidth_gb_per_s']} GB/s (stream copy)",
        f"median of {record['repeats']} constructions each, the modes alternating; sdist: whether the "
        "executor's Beam args got --extra_package",
        "",
        f"{'executor':<22}{'tfx_sdist s':>12}{'no_sdist s':>12}{'saved s':>10}",
    ]
    for name, row in table.items():
        lines.append(f"{name:<22}{row['tfx_sdist']:>12.2f}{row['no_sdist']:>12.2f}"
                     f"{row['tfx_sdist'] - row['no_sdist']:>10.2f}")
    lines.append(f"{'one local run (sum)':<22}{totals['tfx_sdist']:>12.2f}{totals['no_sdist']:>12.2f}"
                 f"{totals['tfx_sdist'] - totals['no_sdist']:>10.2f}")
    sdist = {mode: sorted({r["sdist"] for r in record["runs"] if r["mode"] == mode}) for mode in MODES}
    lines += ["", f"--extra_package in the executors' Beam args: tfx_sdist {sdist['tfx_sdist']}, "
                  f"no_sdist {sdist['no_sdist']}"]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "beam_executor_setup"))
    args = parser.parse_args()
    from benchmarks.machine_probe import memory_bandwidth
    from pipelines.local_runner import run_scratch
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as work, run_scratch(work):
        beam_executor_classes()  # imports outside the timings
        runs = measure(args.repeats)
    table, totals = summarize(runs)
    record = {
        "machine": f"{os.cpu_count()} CPUs ({platform.machine()})",
        "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
        "memory_bandwidth_gb_per_s": round(memory_bandwidth()["stream_gb_per_s"], 1),
        "repeats": args.repeats, "runs": runs,
        "median_seconds": {n: {m: round(v, 3) for m, v in row.items()} for n, row in table.items()},
        "total_seconds": {m: round(v, 3) for m, v in totals.items()},
    }
    results_files.write(args.out, record, text(record))


if __name__ == "__main__":
    main()
