"""StatisticsGen's cost: TFX's StatisticsGen executor as the pipeline runs it (`components.fast_statistics`,
the examples read in bulk with the curated schema's types) against TFX's own executor (tfx_bsl's
per-record read and schema-less decoding), with the pipeline's statistics options, on real files.

    python -m benchmarks.statistics_bench \
        --examples output/scale_run/adam/pipeline_root/ClickLogExampleGen/examples/1 \
        --schema output/scale_run/adam/pipeline_root/SchemaGen/schema/3/schema.pbtxt \
        --files 3 --out benchmarks/results/statistics

Each case is one `Do()` in this process (DirectRunner in memory, one worker) over the first --files
files of the eval split, timed without process and TensorFlow start-up; cases alternate (bulk, tfx,
bulk, tfx, ...) so that a shared machine's load falls on both alike. The statistics of the two cases
must agree: example counts and every feature's statistics, except the approximate sketches' top values,
rank histograms and quantiles (which depend on the order values arrive in), and means and standard
deviations to 1e-9 relative (float sums in another order).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from typing import Dict, List, Optional

from benchmarks import results_files
from benchmarks.evaluator_bench import eval_examples_artifact, schema_artifact

CASES = ("bulk", "tfx")
FLOAT_RTOL = 1e-9


def comparable(feature):
    """A feature's statistics without the order-dependent sketches, and its float sums apart:
    (statistics, {field: value})."""
    feature = type(feature).FromString(feature.SerializeToString())
    floats = {}
    if feature.HasField("string_stats"):
        del feature.string_stats.top_values[:]
        feature.string_stats.ClearField("rank_histogram")
    if feature.HasField("num_stats"):
        keep = [h for h in feature.num_stats.histograms if h.type != h.QUANTILES]
        del feature.num_stats.histograms[:]
        feature.num_stats.histograms.extend(keep)
        for field in ("mean", "std_dev"):
            floats[field] = getattr(feature.num_stats, field)
            feature.num_stats.ClearField(field)
    return feature, floats


def disagreements(ours, theirs) -> List[str]:
    """Where two statistics protos (one dataset each) differ beyond the sketches and float sums."""
    a, b = ours.datasets[0], theirs.datasets[0]
    if a.num_examples != b.num_examples:
        return [f"num_examples {a.num_examples} vs {b.num_examples}"]
    by_name = {f.path.step[0]: f for f in b.features}
    found = []
    for feature in a.features:
        name = feature.path.step[0]
        if name not in by_name:
            found.append(f"{name}: only in one")
            continue
        (stats_a, floats_a), (stats_b, floats_b) = comparable(feature), comparable(by_name.pop(name))
        if stats_a != stats_b:
            found.append(f"{name}: statistics")
        for field, value in floats_a.items():
            if abs(value - floats_b[field]) > FLOAT_RTOL * max(abs(value), abs(floats_b[field]), 1e-300):
                found.append(f"{name}: {field} {value!r} vs {floats_b[field]!r}")
    found += [f"{name}: only in one" for name in by_name]
    return found


def generate(case: str, examples, schema_file: str, tmp: str) -> Dict:
    """One StatisticsGen run: wall seconds and its statistics (DatasetFeatureStatisticsList)."""
    import tensorflow_data_validation as tfdv
    from tfx.components.statistics_gen import executor as tfx_executor
    from tfx.types import standard_artifacts

    from components import fast_statistics
    from components.schema import statistics_options

    run = tempfile.mkdtemp(dir=tmp, prefix=f"{case}-")
    inputs = {"examples": [examples]}
    executor = tfx_executor.Executor()
    if case == "bulk":
        inputs["schema"] = [schema_artifact(schema_file, run)]
        executor = fast_statistics.Executor()
    output = standard_artifacts.ExampleStatistics()
    output.uri = os.path.join(run, "statistics")
    output.split_names = '["eval"]'
    start = time.perf_counter()
    executor.Do(inputs, {"statistics": [output]},
                {"stats_options_json": statistics_options().to_json(), "exclude_splits": "[]"})
    wall = time.perf_counter() - start
    stats = tfdv.load_stats_binary(os.path.join(output.uri, "Split-eval", "FeatureStats.pb"))
    return {"case": case, "wall_s": round(wall, 2), "statistics": stats}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", required=True, help="an ExampleGen Examples artifact folder")
    parser.add_argument("--schema", required=True, help="the pipeline's schema.pbtxt (SchemaGen)")
    parser.add_argument("--files", type=int, default=1, help="eval files to read")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "statistics"))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    runs, first = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        examples = eval_examples_artifact(args.examples, args.files, tmp)
        for _ in range(args.repeats):
            for case in CASES:
                run = generate(case, examples, args.schema, tmp)
                first.setdefault(case, run["statistics"])
                runs.append({"case": case, "wall_s": run["wall_s"]})
                print(f"{case:5s} {run['wall_s']:7.1f} s", flush=True)
    report = {"benchmark": "TFX StatisticsGen executor: bulk read (components.fast_statistics) vs TFX's read",
              "examples": os.path.abspath(args.examples), "eval_files": args.files,
              "rows": first["tfx"].datasets[0].num_examples, "repeats": args.repeats,
              "disagreements": disagreements(first["bulk"], first["tfx"]),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_average_before": round(load_before, 2),
                          "load_average_after": round(os.getloadavg()[0], 2)},
              "runs": runs}
    write_report(report, args.out)


def write_report(report: Dict, out: str) -> None:
    """Adds the summary (medians, speed-up) and writes OUT.json/.txt."""
    walls = {case: statistics.median(r["wall_s"] for r in report["runs"] if r["case"] == case) for case in CASES}
    report["summary"] = {"bulk_s": walls["bulk"], "tfx_s": walls["tfx"],
                         "speed_up": round(walls["tfx"] / walls["bulk"], 2),
                         "statistics_agree": not report["disagreements"]}
    machine, summary = report["machine"], report["summary"]
    lines = [report["benchmark"],
             f"{report['rows']:,d} rows ({report['eval_files']} eval file(s) of {report['examples']}); the "
             "pipeline's statistics options (sketch-based top values and distinct counts)",
             f"executor Do() wall s, median of {report['repeats']}, cases alternating; DirectRunner in memory; "
             f"load average {machine['load_average_before']} before, {machine['load_average_after']} after",
             "statistics agree: example counts and every feature's statistics except the sketches' top values, "
             f"rank histograms and quantiles; means and standard deviations within {FLOAT_RTOL:g} relative", "",
             "bulk_s  tfx_s  speed-up  statistics agree",
             f"{summary['bulk_s']:6.1f}  {summary['tfx_s']:5.1f}  {summary['speed_up']:7.2f}x  "
             f"{'yes' if summary['statistics_agree'] else 'NO: ' + '; '.join(report['disagreements'][:5])}"]
    results_files.write(out, report, "\n".join(lines))


if __name__ == "__main__":
    main()
