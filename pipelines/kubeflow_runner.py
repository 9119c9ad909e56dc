"""Kubeflow Pipelines v2 commands: `python -m pipelines compile | submit | schedule` (docs/kubeflow.md).

The command line only: compiling is ``pipelines.kubeflow_compile``, the KFP client calls are
``pipelines.kubeflow_client``, and the config comes from the options through the same helper as
`python -m pipelines run` (``pipelines.config.config_from_options``). Runtime parameters of the
compiled pipeline (override per run with ``--param NAME=VALUE``; ``pipelines.runtime_parameters``):

  data_root              str    ClickLogExampleGen input_base (folder of the click logs / spans)
  span_window            int    newest N spans ingested per run
  max_bad_fraction       float  quarantine threshold of ExampleGen
  trainer_custom_config  str    the Trainer's custom_config JSON (model and optimizer hyperparameters)

Heavy imports (TensorFlow, TFX) happen only when compiling; `submit`/`schedule` of a compiled file
import only kfp.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import warnings

from pipelines import kubeflow_client as client
from pipelines import kubeflow_compile
from pipelines import runtime_parameters as runtime

DEFAULT_PACKAGE = "sparsectr_pipeline.yaml"


def _add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    from pipelines.config import BEAM_PRESETS
    p.add_argument("--config", required=required,
                   help="YAML file overlaying the defaults of pipelines/config.py (e.g. k8s/base/config/pipeline.yaml)")
    p.add_argument("--data", metavar="URI", help="data.data_root: folder of the click logs as the cluster sees it "
                                                 "(gs://..., or a path mounted in the pipeline image)")
    p.add_argument("--serving-dir", metavar="URI", help="serving.serving_dir: TF Serving's model base folder "
                                                        "the Pusher writes <model>/<version>/ into")
    p.add_argument("--image", help="kubeflow.image: the pipeline image every step runs in")
    p.add_argument("--pipeline-root", help="kubeflow.pipeline_root: where the steps write their artifacts")
    p.add_argument("--beam-preset", choices=["local"] + sorted(BEAM_PRESETS), help="Beam runner preset")
    p.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                   help="extra Beam pipeline argument, passed through unchanged (repeatable)")


def _add_endpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--package", metavar="FILE", help="compiled PipelineSpec YAML (from `compile`); "
                                                     "without it the pipeline is compiled from --config first")
    p.add_argument("--endpoint", metavar="URL", help="KFP API endpoint, e.g. http://ml-pipeline.kubeflow:8888 "
                                                     "(default: kubeflow.endpoint of the config, else $KF_PIPELINES_ENDPOINT)")
    p.add_argument("--experiment", default=client.DEFAULT_EXPERIMENT, help="KFP experiment (created if missing)")
    p.add_argument("--namespace", help="Kubernetes namespace (multi-user KFP)")
    p.add_argument("--service-account", help="Kubernetes service account of the run's pods")
    p.add_argument("--token-file", metavar="PATH",
                   help=f"ServiceAccount token (audience {client.TOKEN_AUDIENCE}) sent as the KFP credentials "
                        f"(default: ${client.TOKEN_PATH_ENV}, else {client.DEFAULT_TOKEN_PATH} when it exists)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help=f"runtime parameter override (repeatable): {', '.join(runtime.NAMES)}")
    p.add_argument("--trainer-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override one TrainerConfig field for this run (repeatable), e.g. epochs=8, "
                        "l21=0.002, optimizer=group_adagrad")


def kubeflow_config(args):
    """The config of `compile`/`submit`/`schedule`: defaults, --config, then the options given (the
    same helper as `python -m pipelines run`: a bad value names its option)."""
    from pipelines.config import config_from_options
    if args.config and not os.path.isfile(args.config):
        raise ValueError(f"--config {args.config}: no such file")
    return config_from_options(args.config, {  # config key: (option, value or None when not given)
        "data.data_root": ("--data", getattr(args, "data", None) or None),
        "serving.serving_dir": ("--serving-dir", getattr(args, "serving_dir", None) or None),
        "kubeflow.image": ("--image", getattr(args, "image", None) or None),
        "kubeflow.pipeline_root": ("--pipeline-root", getattr(args, "pipeline_root", None) or None),
        "beam_preset": ("--beam-preset", getattr(args, "beam_preset", None) or None),
        "beam_args": ("--beam-arg", list(getattr(args, "beam_arg", None) or []) or None),
    })


def _quiet() -> None:
    """TF/TFX start-up notices say nothing about a compile; errors still show."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)


def cmd_compile(args) -> int:
    config = kubeflow_config(args)
    kubeflow_compile.check_kubeflow_config(config)
    for line in kubeflow_compile.local_path_warnings(config):
        print(line, file=sys.stderr)
    _quiet()
    path = kubeflow_compile.compile_pipeline(config, args.output)
    claim = config.kubeflow.serving_volume_claim
    print(f"compiled {config.pipeline_name} -> {path} (image {config.kubeflow.image}, "
          f"pipeline root {config.kubeflow.pipeline_root}; models pushed to {config.serving_dir}"
          + (f" on volume claim {claim}, mounted in {' and '.join(kubeflow_compile.SERVING_DIR_STEPS)})" if claim else ")"))
    return 0


def _package_and_config(args):
    """(package path, config or None, temp dir or None): --package as given, else compiled from --config."""
    if not args.package and not args.config:
        raise ValueError("give --package FILE (compiled) or --config FILE (compiled now)")
    config = kubeflow_config(args) if args.config else None
    if args.package:
        client.load_package(args.package)  # fail on a bad file before anything else
        return args.package, config, None
    kubeflow_compile.check_kubeflow_config(config)
    for line in kubeflow_compile.local_path_warnings(config):
        print(line, file=sys.stderr)
    _quiet()
    tmp = tempfile.mkdtemp(prefix="sparsectr-kfp-")
    return kubeflow_compile.compile_pipeline(config, os.path.join(tmp, DEFAULT_PACKAGE)), config, tmp


def _endpoint(args, config) -> str:
    return args.endpoint or (config.kubeflow.endpoint if config else None) or os.environ.get("KF_PIPELINES_ENDPOINT", "")


def cmd_submit(args) -> int:
    params = client.parse_params(args.param)
    client.token_path(args.token_file)  # an unreadable token fails before the compile
    if args.endpoint is not None:
        client.check_endpoint(args.endpoint)
    package, config, tmp = _package_and_config(args)
    try:
        params.update(client.trainer_override(client.load_package(package), args.trainer_arg))
        result = client.submit(package, _endpoint(args, config), params=params, run_name=args.run_name,
                        experiment=args.experiment, pipeline_root=config.kubeflow.pipeline_root if config else None,
                        namespace=args.namespace, service_account=args.service_account,
                        token_file=args.token_file)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))
    return 0


def cmd_schedule(args) -> int:
    params = client.parse_params(args.param)
    client.normalize_cron(args.cron)
    client.token_path(args.token_file)
    if args.endpoint is not None:
        client.check_endpoint(args.endpoint)
    package, config, tmp = _package_and_config(args)
    try:
        params.update(client.trainer_override(client.load_package(package), args.trainer_arg))
        result = client.schedule(package, _endpoint(args, config), args.cron, params=params, job_name=args.job_name,
                          experiment=args.experiment,
                          pipeline_root=config.kubeflow.pipeline_root if config else None,
                          namespace=args.namespace, start_time=args.start_time,
                          service_account=args.service_account, token_file=args.token_file)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))
    return 0


def add_commands(sub) -> None:
    """Adds `compile`, `submit` and `schedule` to the `python -m pipelines` subcommands."""
    fmt = argparse.RawDescriptionHelpFormatter
    comp = sub.add_parser("compile", formatter_class=fmt,
                          help="compile the pipeline for Kubeflow Pipelines v2 (PipelineSpec YAML)",
                          description="Compile the pipeline with TFX's KubeflowV2DagRunner into a KFP v2 "
                                      "PipelineSpec YAML.\nRuntime parameters: " + ", ".join(runtime.NAMES))
    _add_config_args(comp)
    comp.add_argument("--output", default=DEFAULT_PACKAGE, metavar="FILE.yaml",
                      help=f"where to write the PipelineSpec (default ./{DEFAULT_PACKAGE})")
    comp.set_defaults(func=cmd_compile)

    sm = sub.add_parser("submit", formatter_class=fmt, help="create one run on a Kubeflow Pipelines endpoint",
                        description="Create one run of the compiled pipeline on a KFP endpoint "
                                    "(kfp.Client.create_run_from_pipeline_package).")
    _add_config_args(sm)
    _add_endpoint_args(sm)
    sm.add_argument("--run-name", help="run name (default: '<pipeline> <UTC time>')")
    sm.set_defaults(func=cmd_submit)

    sc = sub.add_parser("schedule", formatter_class=fmt,
                        help="create a recurring run (cron, one run at a time, no catch-up)",
                        description="Create a KFP recurring run of the compiled pipeline: one run per cron "
                                    "tick, max_concurrency=1, no catch-up of missed ticks.")
    sc.add_argument("--cron", required=True, metavar="EXPR",
                    help="cron expression: 5 fields ('0 3 * * *' = 03:00 daily, scheduler time zone) "
                         "or KFP's 6 fields with seconds first")
    _add_config_args(sc)
    _add_endpoint_args(sc)
    sc.add_argument("--job-name", help="recurring run name (default: '<pipeline> retraining')")
    sc.add_argument("--start-time", help="RFC 3339 time of the first tick (default: now)")
    sc.set_defaults(func=cmd_schedule)
