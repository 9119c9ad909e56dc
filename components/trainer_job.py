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
(`write_spec` writes one from TFX artifacts; ``python -m pipelines.trainer_spec`` the one of the
pipeline's Trainer step, from a pipeline config). A failure prints one line, ``sparsectr trainer
<task>: <error>``, as the last line of stderr and exits 1.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List

RUN_FN = "components.trainer_module.run_fn"  # the Trainer's module function, as TFX names it
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m components.trainer_job SPEC.json\n"
              "(a SPEC of the pipeline's Trainer step: python -m pipelines.trainer_spec OUT.json --help)",
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
