"""The Evaluator's metrics: the pipeline's eval_config (`components.eval_metrics`: BinaryLogLoss and
TFMA's AUC, Calibration, MeanLabel and MeanPrediction batched) against the same config computed by
TFMA's own metrics (tf_keras's BinaryCrossentropy, TFMA's AUC, ...), on real eval files.

    python -m benchmarks.evaluator_metrics_bench \
        --examples output/pipeline_root/ClickLogExampleGen/examples/1 \
        --model output/serving/ctr/<version> \
        --schema output/pipeline_root/SchemaGen/schema/3/schema.pbtxt \
        --files 1 --copies 30 --out benchmarks/results/evaluator_metrics

Each case is one `Do()` of the pipeline's Evaluator executor with the narrowed schema
(`benchmarks.evaluator_bench.evaluate`), cases alternating. The log losses must agree to 1e-6 relative
(tf_keras sums in float32, BinaryLogLoss in float64), every other metric to 1e-8: TFMA sizes its
batches by timing, so its sums differ in their last digits from run to run (AUC 1.6e-9 apart between
two runs of one case on a scale day's eval file).
"""
from __future__ import annotations

import argparse
from typing import Dict, List, Optional

from benchmarks import results_files
from benchmarks.evaluator_bench import (add_arguments, compare_cases, comparison_header, evaluate, max_relative_difference,
                                        median_walls)

CASES = ("pipeline", "tfma")
LOG_LOSS = "binary_crossentropy"
LOG_LOSS_RTOL = 1e-6
TFMA_OWN = {"BinaryLogLoss": "BinaryCrossentropy"}  # the other classes: their name without "Batched"
METRICS_RTOL = 1e-8


def case_config(case: str):
    """The pipeline's eval_config, or (tfma) that config with each metric of
    `components.eval_metrics` computed by TFMA's own: tf_keras's BinaryCrossentropy for BinaryLogLoss,
    TFMA's AUC for BatchedAUC, and so on."""
    from components.dataset_spec import load_spec
    from pipelines.config import PipelineConfig
    from pipelines.pipeline import EVAL_METRICS_MODULE, eval_config
    config = eval_config(PipelineConfig(), load_spec("criteo"))
    if case == "tfma":
        for spec in config.metrics_specs:
            for metric in spec.metrics:
                if metric.module == EVAL_METRICS_MODULE:
                    metric.class_name = TFMA_OWN.get(metric.class_name, metric.class_name.replace("Batched", "", 1))
                    metric.module = ""
    return config


def agreement(runs: List[Dict]) -> Dict[str, float]:
    """The largest relative difference between runs: of the log loss, and of every other metric."""
    def only(log_loss: bool) -> List[Dict]:
        return [{"metrics": {k: v for k, v in r["metrics"].items() if (f"/{LOG_LOSS}/" in k) == log_loss}}
                for r in runs]
    return {"log_loss": max_relative_difference(only(True)), "other": max_relative_difference(only(False))}


def summarize(runs: List[Dict]) -> List[Dict]:
    out = []
    for models, same, walls in median_walls(runs, CASES):
        worst = agreement(same)
        out.append({"models": models, **{f"{case}_s": walls[case] for case in CASES},
                    "speed_up": round(walls["tfma"] / walls["pipeline"], 2),
                    "log_loss_max_relative_difference": worst["log_loss"],
                    "other_max_relative_difference": worst["other"],
                    "metrics_agree": worst["log_loss"] <= LOG_LOSS_RTOL and worst["other"] <= METRICS_RTOL})
    return out


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, "evaluator_metrics")
    args = parser.parse_args(argv)
    report = compare_cases(args, CASES, lambda case, models, examples, tmp: evaluate(
        "narrowed", models, examples, args.model, args.schema, tmp, case_config(case)),
        "TFX Evaluator executor (BaselineEvaluator, narrowed schema): the pipeline's metrics "
        "(components.eval_metrics) vs TFMA's own (tf_keras BinaryCrossentropy, AUC, Calibration, "
        "MeanLabel, MeanPrediction)")
    report["summary"] = summarize(report["runs"])
    write_report(report, args.out)


def write_report(report: Dict, out: str) -> None:
    lines = comparison_header(report) + [
        f"agree: log loss within {LOG_LOSS_RTOL:g} relative (float32 vs float64 sums), every other metric "
        f"within {METRICS_RTOL:g}", "",
        "models  pipeline_s  tfma_s  speed-up  log loss rel. diff  other rel. diff  agree"]
    lines += [f"{s['models']:6d}  {s['pipeline_s']:10.1f}  {s['tfma_s']:6.1f}  {s['speed_up']:7.2f}x  "
              f"{s['log_loss_max_relative_difference']:18.1e}  {s['other_max_relative_difference']:15.1e}  "
              f"{'yes' if s['metrics_agree'] else 'NO'}" for s in report["summary"]]
    results_files.write(out, report, "\n".join(lines))


if __name__ == "__main__":
    main()
