"""The SPEC of the pipeline's Trainer step for given artifacts, for ``python -m components.trainer_job``.

    python -m pipelines.trainer_spec trainer_spec.json --config pipeline.yaml \
        --examples URI --transform-graph URI [--schema URI] --model URI --model-run URI [--base-model URI] \
        [--set trainer.distribution=parameter_server ...]

The same run_fn, train/eval args and custom_config (the config's ``trainer`` section, the dataset
spec) as the Trainer of ``pipelines.pipeline``: every task of a training cluster (a TFJob's pods,
``components.local_cluster``) runs ``python -m components.trainer_job`` on this file. Here, not in
``components/``, because it reads the pipeline config.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional

import yaml

from pipelines.config import load_config


def spec_from_config(config_path: Optional[str], examples: str, transform_graph: str, schema: Optional[str],
                     model: str, model_run: str, base_model: Optional[str] = None,
                     overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The SPEC of the pipeline's Trainer step (pipelines.pipeline) for a pipeline config and artifact URIs:
    the same run_fn, train/eval args and custom_config (`trainer` section, dataset spec)."""
    from tfx.proto import trainer_pb2
    from tfx.types import artifact_utils, standard_artifacts
    from tfx.utils import proto_utils

    from components import trainer_job
    from components.dataset_spec import load_spec
    config = load_config(config_path, overrides)
    spec = load_spec(config.data.dataset_format)
    inputs = {}
    for key, uri, kind in (("examples", examples, standard_artifacts.Examples),
                           ("transform_graph", transform_graph, standard_artifacts.TransformGraph),
                           ("schema", schema, standard_artifacts.Schema),
                           ("base_model", base_model, standard_artifacts.Model)):
        if uri:
            artifact = kind()
            artifact.uri = uri
            if key == "examples":
                artifact.split_names = artifact_utils.encode_split_names(["train", "eval"])
            inputs[key] = [artifact]
    exec_properties = {
        "run_fn": trainer_job.RUN_FN,
        "train_args": proto_utils.proto_to_json(trainer_pb2.TrainArgs(num_steps=config.trainer.train_steps)),
        "eval_args": proto_utils.proto_to_json(trainer_pb2.EvalArgs(num_steps=config.trainer.eval_steps)),
        "custom_config": json.dumps({"trainer": config.trainer.to_json(), "dataset_spec": spec.to_json()}),
    }
    return {"inputs": {key: trainer_job.serialize_artifacts(values) for key, values in inputs.items()},
            "outputs": {"model": model, "model_run": model_run}, "exec_properties": exec_properties}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.trainer_spec",
                                     description="Write the SPEC of the pipeline's Trainer step for given artifacts.")
    parser.add_argument("out", help="the SPEC file to write (JSON)")
    parser.add_argument("--config", help="pipeline config YAML (default: the embedded default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. trainer.distribution=parameter_server (YAML value)")
    for name in ("examples", "transform-graph", "model", "model-run"):
        parser.add_argument(f"--{name}", required=True, help=f"URI of the {name.replace('-', ' ')} artifact")
    parser.add_argument("--schema")
    parser.add_argument("--base-model", help="URI of a model to warm-start from (LatestPushedModel's layout)")
    args = parser.parse_args(argv)
    overrides: Dict[str, Any] = {}
    for item in args.set:
        key, value = item.split("=", 1)
        *sections, leaf = key.split(".")
        node = overrides
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = yaml.safe_load(value)
    spec = spec_from_config(args.config, args.examples, args.transform_graph, args.schema, args.model,
                            args.model_run, args.base_model, overrides)
    with open(args.out, "w") as f:
        json.dump(spec, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
