"""One task of a training cluster: TFX's Trainer executor (`run_fn`) on artifacts given in a file.

    python -m components.trainer_job SPEC.json

Every task of a cluster -- every pod of a TFJob, every process of `components.local_cluster` -- runs
this same command with the same SPEC and its own ``TF_CONFIG``; `run_fn` decides by the task what it
does (trains and exports on the chief, serves on parameter-server workers and parameter servers,
trains its share on multi-worker workers). SPEC is JSON:

    {"inputs":  {"examples": [ARTIFACT], "transform_graph": [ARTIFACT], "schema": [ARTIFACT], ...},
     "outputs": {"model": "<uri>", "model_run": "<uri>"},
     "exec_properties": {"run_fn": "components.trainer_module.run_fn", "custom_config": "...", ...}}

with ARTIFACT = {"artifact_type": <MLMD ArtifactType as JSON>, "artifact": <MLMD Artifact as JSON>}
(`write_spec` writes one from TFX artifacts). A failure prints one line, ``sparsectr trainer
<task>: <error>``, as the last line of stderr and exits 1.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

FAILURE_PREFIX = "sparsectr trainer"
_MAX_LINE = 400  # characters of the error message in the failure line


def serialize_artifacts(artifacts) -> List[Dict[str, Any]]:
    from google.protobuf import json_format
    return [{"artifact_type": json_format.MessageToDict(a.artifact_type),
             "artifact": json_format.MessageToDict(a.mlmd_artifact)} for a in artifacts]


def write_spec(path: str, inputs: Dict[str, list], outputs: Dict[str, str], exec_properties: Dict[str, Any]) -> str:
    """Writes a SPEC for `inputs` (key -> TFX artifacts), output URIs and the Trainer's exec properties."""
    spec = {"inputs": {key: serialize_artifacts(values) for key, values in inputs.items()},
            "outputs": dict(outputs), "exec_properties": dict(exec_properties)}
    with open(path, "w") as f:
        json.dump(spec, f, indent=1)
    return path


def spec_from_config(config_path: Optional[str], examples: str, transform_graph: str, schema: Optional[str],
                     model: str, model_run: str, base_model: Optional[str] = None,
                     overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The SPEC of the pipeline's Trainer step (pipelines.pipeline) for a pipeline config and artifact URIs:
    the same run_fn, train/eval args and custom_config (`trainer` section, dataset spec)."""
    import dataclasses

    from tfx.proto import trainer_pb2
    from tfx.types import artifact_utils, standard_artifacts
    from tfx.utils import proto_utils

    from components.dataset_spec import load_spec
    from pipelines.config import load_config
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
        "run_fn": "components.trainer_module.run_fn",
        "train_args": proto_utils.proto_to_json(trainer_pb2.TrainArgs(num_steps=config.trainer.train_steps)),
        "eval_args": proto_utils.proto_to_json(trainer_pb2.EvalArgs(num_steps=config.trainer.eval_steps)),
        "custom_config": json.dumps({"trainer": json.dumps(dataclasses.asdict(config.trainer), sort_keys=True),
                                     "dataset_spec": spec.to_json()}),
    }
    return {"inputs": {key: serialize_artifacts(values) for key, values in inputs.items()},
            "outputs": {"model": model, "model_run": model_run}, "exec_properties": exec_properties}


def run(spec: Dict[str, Any]) -> None:
    from google.protobuf import json_format
    from ml_metadata.proto import metadata_store_pb2
    from tfx.components.trainer.executor import GenericExecutor
    from tfx.types import artifact_utils, standard_artifacts

    inputs = {key: [artifact_utils.deserialize_artifact(
                  json_format.ParseDict(a["artifact_type"], metadata_store_pb2.ArtifactType()),
                  json_format.ParseDict(a["artifact"], metadata_store_pb2.Artifact())) for a in values]
              for key, values in spec["inputs"].items()}
    model, model_run = standard_artifacts.Model(), standard_artifacts.ModelRun()
    model.uri, model_run.uri = spec["outputs"]["model"], spec["outputs"]["model_run"]
    GenericExecutor().Do(inputs, {"model": [model], "model_run": [model_run]}, spec["exec_properties"])


def _task_name() -> str:
    task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task") or {}
    return f"{task['type']} {task.get('index', 0)}" if task.get("type") else "(single process)"


def main(argv=None) -> int:
    import argparse
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "write-spec":
        parser = argparse.ArgumentParser(prog="python -m components.trainer_job write-spec",
                                         description="Write the SPEC of the pipeline's Trainer step for given artifacts.")
        parser.add_argument("out", help="the SPEC file to write (JSON)")
        parser.add_argument("--config", help="pipeline config YAML (default: the embedded default)")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="config override, e.g. trainer.distribution=parameter_server (YAML value)")
        for name in ("examples", "transform-graph", "model", "model-run"):
            parser.add_argument(f"--{name}", required=True, help=f"URI of the {name.replace('-', ' ')} artifact")
        parser.add_argument("--schema")
        parser.add_argument("--base-model", help="URI of a model to warm-start from (LatestPushedModel's layout)")
        args = parser.parse_args(argv[1:])
        import yaml
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
    if len(argv) != 1:
        print("usage: python -m components.trainer_job SPEC.json\n"
              "       python -m components.trainer_job write-spec OUT.json --examples URI ... (see --help)",
              file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        spec = json.load(f)
    try:
        run(spec)
    except BaseException as error:  # noqa: BLE001 - reported as one line, then the process ends
        message = " ".join(str(error).split()) or type(error).__name__
        if len(message) > _MAX_LINE:
            message = message[:_MAX_LINE] + " ..."
        print(f"{FAILURE_PREFIX} {_task_name()}: {type(error).__name__}: {message}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # A task whose peers died may hold gRPC threads that block a normal interpreter exit.
    os._exit(code)
