"""`python -m pipelines`: run | generate | score | serve (compile | submit | schedule: Kubeflow, kubeflow_runner.py).

Errors a user can fix (bad paths, specs, options or config values) end with one line on stderr and
exit 2, before anything runs; a failed pipeline run exits 1 after printing and writing the run summary.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as one line on stderr (exit 2), like every other user error."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (--help lists the options)\n")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    from pipelines.config import BEAM_PRESETS, MODELS, OPTIMIZERS, DataConfig
    p.add_argument("--config", help="YAML file overlaying the defaults of pipelines/config.py")
    p.add_argument("--data", help="folder of click-log files (default: generate Criteo-layout logs)")
    p.add_argument("--format", dest="dataset_format",
                   help="criteo | criteo-kaggle | avazu | path/to/spec.yaml (default: criteo)")
    p.add_argument("--input-pattern", metavar="GLOB",
                   help="files under --data to read; {SPAN} (e.g. 'day-{SPAN:5}/*') reads the newest daily span")
    p.add_argument("--span-window", type=int, metavar="N",
                   help=f"with {{SPAN}}: read the newest N spans (default {DataConfig.span_window})")
    p.add_argument("--output", help="output folder (default: ./output)")
    p.add_argument("--rows", type=int,
                   help=f"rows to generate when --data is not given (default {DataConfig.generated_rows})")
    p.add_argument("--model", choices=MODELS)
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--epochs", type=int)
    p.add_argument("--l21", type=float)
    p.add_argument("--target-sparsity", type=float, metavar="FRACTION",
                   help="fraction of embedding rows to end zero, in (0, 1): the Trainer sets l21 while it trains")
    p.add_argument("--max-embedding-bytes", type=float, metavar="BYTES",
                   help="bytes of non-zero embedding rows to end with at most (the Trainer sets l21)")
    p.add_argument("--beam-preset", choices=["local"] + sorted(BEAM_PRESETS),
                   help="Beam runner preset (default local: DirectRunner, in-memory for small input, "
                        "one worker process per core above 64 MB)")
    p.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                   help="extra Beam pipeline argument, passed through unchanged (repeatable)")
    p.add_argument("--score-rows", type=int, default=0, metavar="N",
                   help="after a push, score the first N rows through a local TF Serving process (REST and gRPC)")
    p.add_argument("--verbose", action="store_true", help="full TFX/Beam logs and tracebacks")


def _config_from_args(args):
    """The config of `run`: defaults, --config, then the options given; a bad value names its option."""
    from pipelines.config import config_from_options
    return config_from_options(args.config, {  # config key: (option, value or None when not given)
        "output_dir": ("--output", args.output and os.path.abspath(args.output)),
        "data.data_root": ("--data", args.data and os.path.abspath(args.data)),
        "data.dataset_format": ("--format", args.dataset_format),
        "data.input_pattern": ("--input-pattern", args.input_pattern),
        "data.span_window": ("--span-window", args.span_window),
        "data.generated_rows": ("--rows", args.rows),
        "trainer.model": ("--model", args.model),
        "trainer.optimizer": ("--optimizer", args.optimizer),
        "trainer.epochs": ("--epochs", args.epochs),
        "trainer.l21": ("--l21", args.l21),
        "trainer.target_sparsity": ("--target-sparsity", args.target_sparsity),
        "trainer.max_embedding_bytes": ("--max-embedding-bytes", args.max_embedding_bytes),
        "beam_preset": ("--beam-preset", args.beam_preset),
        "beam_args": ("--beam-arg", list(args.beam_arg) or None),
    })


def _quiet_logs(verbose: bool, config=None):
    """Quiet library logs (serving/quiet.py) and live progress on stderr; returns the RunProgress."""
    from absl import logging as absl_logging

    from pipelines.progress import Display, RunProgress
    from serving.quiet import install_filter, quiet_logs, quiet_process
    quiet_process(verbose)  # again: a no-op when main() did it already
    absl_logging.set_verbosity(absl_logging.INFO)  # LocalDagRunner's stage records are INFO
    harmless = quiet_logs(verbose)
    batch_size = config.trainer.batch_size if config is not None else None
    progress = RunProgress(Display(), verbose=verbose, batch_size=batch_size,
                           # A library may have added a root handler since: filter it too.
                           on_stage_start=lambda: install_filter(harmless) if not verbose else None)
    logging.getLogger("absl").addFilter(progress)
    return progress.start()


def cmd_run(args) -> int:
    from pipelines import local_runner, summary as run_summary
    config = _config_from_args(args)  # a bad config fails here, before logging is set up or anything runs
    progress = _quiet_logs(args.verbose, config)
    try:
        result = local_runner.run(config, score_rows=args.score_rows)
    finally:
        progress.stop()
    print(run_summary.render(result))
    print(f"  summary: {config.summary_path}")
    if result.get("report"):
        print(f"  report: {result['report']}")
    return 0 if result["status"] == "succeeded" else 1


def cmd_generate(args) -> int:
    from pipelines import generator
    cfg = generator.preset_config(args.preset, seed=args.seed)
    report = generator.generate(args.out, args.rows, cfg, span=args.span, truth_path=args.truth)
    print(json.dumps(report, indent=1))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = _Parser(prog="python -m pipelines", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline locally (LocalDagRunner, SQLite MLMD, DirectRunner)")
    _add_run_args(run)
    run.set_defaults(func=cmd_run)
    gen = sub.add_parser("generate", help="write synthetic Criteo-layout click logs with a planted truth")
    gen.add_argument("--out", required=True, help="folder for the click-log file")
    gen.add_argument("--rows", type=int, default=100000)
    gen.add_argument("--seed", type=int, default=7, help="seed of the ground truth")
    from pipelines.config import GENERATOR_PRESETS
    gen.add_argument("--preset", default="default", choices=GENERATOR_PRESETS,
                     help="default (demo-sized vocabularies) | criteo-scale (Criteo-like cardinalities: "
                          "~1.16M vocabulary rows at 10M rows, tails drifting across spans)")
    gen.add_argument("--span", type=int, default=0, help="span number (rows differ per span, truth does not)")
    gen.add_argument("--truth", help="ground-truth JSON path (default: <out>/../ground_truth.json)")
    gen.set_defaults(func=cmd_generate)
    from pipelines import score, serve
    score.add_command(sub)
    serve.add_command(sub)
    try:
        from pipelines import kubeflow_runner
        kubeflow_runner.add_commands(sub)
    except ImportError:
        pass
    args = parser.parse_args(argv)
    from serving.quiet import quiet_process
    quiet_process(getattr(args, "verbose", False))  # before anything imports TensorFlow
    from components.dataset_spec import SpecError
    from pipelines.local_runner import DataError
    try:
        return args.func(args)
    except (DataError, SpecError, ValueError, OSError) as e:
        if getattr(args, "verbose", False):
            raise
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
