"""Transform's fixed cost and the size of the preprocessing graph.

    python -m benchmarks.transform_graph --rows 1000 100000 --repeats 3 \
        --out benchmarks/results/transform_graph

TF Transform traces ``preprocessing_fn`` seven times a run (column inspection, analysis, two saved
models), saves the graph twice and loads it three times (the analysis and each split), so the
graph's op count is much of what a Transform costs before its first row. This runs the pipeline's
Transform executor (``ingest_bench``'s transform stage, DirectRunner in memory, each run in its own
process) on the ExampleGen output of generated Criteo-layout logs with two ``preprocessing_fn``s,
alternated:

* ``current``: ``components.preprocessing.preprocessing_fn``;
* ``baseline``: the same function with each feature made dense as it was before: a
  ``tf.sparse.to_dense`` of a ``[batch, 1]`` SparseTensor built from the feature's
  ``dense_shape[0]``, then a reshape (~11 ops a feature, against 3).

Both must write the same transformed examples (sha256 of the sorted records) and vocabulary.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
from typing import Dict, List, Optional
from unittest import mock

from benchmarks import results_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {"baseline": "benchmarks.transform_graph.baseline_preprocessing_fn",
            "current": "components.preprocessing.preprocessing_fn"}


def _per_feature_dense_columns(features, default, flat=True):
    import tensorflow as tf

    columns = []
    for x in features:
        if isinstance(x, tf.sparse.SparseTensor):
            x = tf.sparse.to_dense(tf.SparseTensor(x.indices, x.values, [x.dense_shape[0], 1]), default_value=default)
        elif isinstance(x, tf.RaggedTensor):
            x = x.to_tensor(default_value=default, shape=[None, 1])
        columns.append(tf.reshape(x, [-1] if flat else [-1, 1]))
    return columns


def baseline_preprocessing_fn(inputs, custom_config):
    from components import preprocessing

    with mock.patch.object(preprocessing, "_dense_columns", _per_feature_dense_columns):
        return preprocessing.preprocessing_fn(inputs, custom_config)


def graph_ops(preprocessing_fn: str) -> int:
    """Ops in the graph TF Transform traces for Criteo's curated schema."""
    import functools
    import importlib

    import tensorflow as tf
    from tensorflow_transform import impl_helper
    from tensorflow_transform.tf_metadata import schema_utils

    from components.dataset_spec import load_spec
    from components.schema import curated_schema

    module, name = preprocessing_fn.rsplit(".", 1)
    fn = getattr(importlib.import_module(module), name)
    spec = load_spec("criteo")
    specs = impl_helper.get_type_specs_from_feature_specs(
        schema_utils.schema_as_feature_spec(curated_schema(spec)).feature_spec)
    with tf.Graph().as_default():
        graph, _, _ = impl_helper.trace_preprocessing_function(
            functools.partial(fn, custom_config={"dataset_spec": spec.to_json()}), specs, use_tf_compat_v1=False)
    return len(graph.get_operations())


def records_sha256(out_dir: str) -> str:
    import tensorflow as tf

    digest = hashlib.sha256()
    for split in ("train", "eval"):
        files = sorted(glob.glob(os.path.join(out_dir, "transformed", f"Split-{split}", "*")))
        records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
        digest.update(split.encode())
        for record in sorted(records):
            digest.update(record)
    return digest.hexdigest()


def format_report(report: Dict) -> str:
    width = max([16] + [len(", ".join(f"{r['seconds']:.1f}" for r in report["runs"]
                                      if (r["size"], r["variant"]) == (size, variant)))
                        for size in report["rows"] for variant in VARIANTS])
    lines = [report["benchmark"], f"Command: {report['command']}",
             f"{report['machine']['cpus']} CPUs; load average before {report['machine']['load_average_before']}, "
             f"after {report['machine']['load_average_after']}",
             "Transform: " + report["transform"], "",
             f"graph ops (Criteo): baseline {report['graph_ops']['baseline']:,}, "
             f"current {report['graph_ops']['current']:,}", "",
             f"{'rows':>9} {'variant':<9} {'Do() s, each run':<{width}} {'median':>7} {'CPU s median':>13} "
             f"{'baseline/current':>17}  same output"]
    for size in report["rows"]:
        runs = [r for r in report["runs"] if r["size"] == size]
        median = {v: statistics.median(r["seconds"] for r in runs if r["variant"] == v) for v in VARIANTS}
        cpu = {v: statistics.median(r["cpu_s"] for r in runs if r["variant"] == v) for v in VARIANTS}
        same = len({(r["records_sha256"], r["vocabulary_sha256"]) for r in runs}) == 1
        for v in VARIANTS:
            each = ", ".join(f"{r['seconds']:.1f}" for r in runs if r["variant"] == v)
            line = f"{size:>9,} {v:<9} {each:<{width}} {median[v]:>7.1f} {cpu[v]:>13.1f}"
            if v == "current":
                line += f" {median['baseline'] / median['current']:>16.2f}x  {'yes' if same else 'NO'}"
            lines.append(line)
    lines += ["", "Do() s: the Transform executor's Do() wall time (analysis, transform graph, both splits' "
              "transformed examples written), without process and TensorFlow start-up; runs alternate "
              "baseline, current; same output: every run wrote the same transformed records and vocabulary"]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 100000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "transform_graph"))
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)

    from benchmarks import ingest_bench

    workdir = args.workdir or tempfile.mkdtemp(prefix="transform_graph_")
    load_before = os.getloadavg()
    runs: List[Dict] = []
    for size in args.rows:
        data = ingest_bench.generate_data(workdir, size, 4)
        examples = os.path.join(workdir, f"examples-{size}")
        r = ingest_bench.run_child("examplegen", "in_memory", 1, data, examples, 3600)
        if "error" in r:
            raise SystemExit(f"ExampleGen on {size} rows failed: {r['error']}")
        for repeat in range(args.repeats):
            for variant, fn in VARIANTS.items():
                out_dir = os.path.join(workdir, f"transform-{size}-{variant}-{repeat}")
                r = ingest_bench.run_child("transform", "in_memory", 1, "-", examples, 3600, out_dir,
                                           preprocessing_fn=fn)
                if "error" in r:
                    raise SystemExit(f"Transform ({variant}, {size} rows) failed: {r['error']}")
                row = {"size": size, "variant": variant, "repeat": repeat, "seconds": r["seconds"],
                       "cpu_s": r["cpu_s"], "rows": r["rows"], "peak_rss_mib": r["peak_rss_mib"],
                       "vocabulary_sha256": r["vocabulary_sha256"], "records_sha256": records_sha256(out_dir)}
                runs.append(row)
                shutil.rmtree(out_dir, ignore_errors=True)
                print(f"{size:>9,} {variant:<9} {row['seconds']:6.1f} s  CPU {row['cpu_s']:6.1f} s", flush=True)
    report = {
        "benchmark": "Transform's fixed cost and the preprocessing graph's size (benchmarks/transform_graph.py)",
        "command": "TF_USE_LEGACY_KERAS=1 PYTHONPATH=. python -m benchmarks.transform_graph " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "machine": {"cpus": os.cpu_count(), "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "transform": "the pipeline's Transform executor (components.fast_transform.Executor), DirectRunner in "
                     "memory, on ClickLogExampleGen output of generated Criteo-layout logs (4 files)",
        "graph_ops": {v: graph_ops(fn) for v, fn in VARIANTS.items()},
        "rows": args.rows,
        "runs": runs,
    }
    results_files.write(args.out, report, format_report(report))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
