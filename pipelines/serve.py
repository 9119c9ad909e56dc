"""`python -m pipelines serve` (`make serve`): the local serving process over the pipeline's serving folder.

The serving runtime (serving/local_server) takes plain arguments; this is the glue that reads them
from the pipeline's config: --base defaults to ``serving.serving_dir`` (``<output>/serving``, where
`make demo` pushes) and --model-name to ``serving.model_name``, both after --config. Every other
option is the server's own (``serving.local_server.cli.add_arguments``).
"""
from __future__ import annotations

import argparse

from pipelines.config import PipelineConfig, load_config


def default_base(config: PipelineConfig = None) -> str:
    """The serving base directory of `config` (default: the pipeline's defaults)."""
    return (config or PipelineConfig()).serving_dir


def default_model_name(config: PipelineConfig = None) -> str:
    return (config or PipelineConfig()).serving.model_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from serving.local_server import cli as server_cli
    parser.add_argument("--config", help="YAML file overlaying the defaults of pipelines/config.py")
    server_cli.add_arguments(parser, base_required=False, model_name_default=None,
                             base_help="serving base directory (default: the config's serving.serving_dir, "
                                       "output/serving: where `make demo` pushes)")


def add_command(sub) -> None:
    p = sub.add_parser("serve", help="serve the pushed model locally over TF Serving's REST and gRPC APIs "
                                     "(the TF runtime, no TF Serving binary)",
                       description=__doc__.splitlines()[0])
    add_arguments(p)
    p.set_defaults(func=cmd_serve)


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """`args` with --base and --model-name filled from the config where not given."""
    config = load_config(args.config)
    args.base = args.base or default_base(config)
    args.model_name = args.model_name or default_model_name(config)
    return args


def cmd_serve(args) -> int:
    from serving.local_server import cli as server_cli
    return server_cli.serve(resolve(args))
