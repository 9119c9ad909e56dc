"""The Evaluator's model calls: the pipeline's loader (`components.eval_model`: TFMA's, each one-input
signature callable by position) against TFMA's own, where every positional call of the serving
signature first fails on TF's by-name binding and formats the whole batch into a TypeError.

    python -m benchmarks.evaluator_loader_bench \
        --examples output/pipeline_root/ClickLogExampleGen/examples/1 \
        --model output/serving/ctr/<version> \
        --schema output/pipeline_root/SchemaGen/schema/3/schema.pbtxt \
        --files 1 --copies 30 --out benchmarks/results/evaluator_loader

Each case is one `Do()` of the pipeline's Evaluator executor with the narrowed schema and the
pipeline's eval_config (`benchmarks.evaluator_bench.evaluate`), cases alternating. Both cases compute
the same metrics from the same model outputs: they must agree to 1e-8 relative (TFMA sizes its
batches by timing, so its float sums differ in their last digits from run to run).
"""
from __future__ import annotations

import argparse
from typing import Dict, List, Optional

from benchmarks import results_files
from benchmarks.evaluator_bench import (add_arguments, compare_cases, comparison_header, evaluate, max_relative_difference,
                                        median_walls)

CASES = ("pipeline", "tfma_loader")
METRICS_RTOL = 1e-8


def summarize(runs: List[Dict]) -> List[Dict]:
    out = []
    for models, same, walls in median_walls(runs, CASES):
        worst = max_relative_difference(same)
        out.append({"models": models, **{f"{case}_s": walls[case] for case in CASES},
                    "speed_up": round(walls["tfma_loader"] / walls["pipeline"], 2),
                    "metrics_max_relative_difference": worst, "metrics_agree": worst <= METRICS_RTOL})
    return out


def report_lines(report: Dict) -> List[str]:
    lines = comparison_header(report) + [
        f"agree: every metric within {METRICS_RTOL:g} relative", "",
        "models  pipeline_s  tfma_loader_s  speed-up  metrics rel. diff  agree"]
    lines += [f"{s['models']:6d}  {s['pipeline_s']:10.1f}  {s['tfma_loader_s']:13.1f}  {s['speed_up']:7.2f}x  "
              f"{s['metrics_max_relative_difference']:17.1e}  {'yes' if s['metrics_agree'] else 'NO'}"
              for s in report["summary"]]
    return lines


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, "evaluator_loader")
    args = parser.parse_args(argv)
    report = compare_cases(args, CASES, lambda case, models, examples, tmp: evaluate(
        "narrowed", models, examples, args.model, args.schema, tmp, tfma_loader=case == "tfma_loader"),
        "TFX Evaluator executor (BaselineEvaluator, narrowed schema, the pipeline's eval_config): "
        "the pipeline's model loader (components.eval_model) vs TFMA's own")
    report["summary"] = summarize(report["runs"])
    results_files.write(args.out, report, "\n".join(report_lines(report)))


if __name__ == "__main__":
    main()
