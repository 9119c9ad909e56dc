"""`python -m pipelines serve` (`make serve`): the serving process's options filled from the pipeline config."""
import argparse
import os

from pipelines import serve


def _parse(argv):
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    return serve.resolve(parser.parse_args(argv))


def test_make_serve_defaults_serve_the_pipelines_serving_dir():
    from pipelines.config import PipelineConfig, ServingConfig

    assert serve.default_base() == PipelineConfig().serving_dir
    assert serve.default_base().endswith(os.path.join("output", "serving"))
    args = _parse([])
    assert args.base == PipelineConfig().serving_dir
    assert args.model_name == ServingConfig().model_name
    assert (args.rest_port, args.grpc_port) == (8501, 8500)
    assert args.host == "127.0.0.1"


def test_serve_takes_the_config_and_explicit_options(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"serving:\n  serving_dir: {tmp_path / 'pushed'}\n  model_name: other\n")
    args = _parse(["--config", str(config)])
    assert (args.base, args.model_name) == (str(tmp_path / "pushed"), "other")
    args = _parse(["--config", str(config), "--base", "/srv/models", "--model-name", "ctr"])
    assert (args.base, args.model_name) == ("/srv/models", "ctr")
