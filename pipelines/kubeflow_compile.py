"""Kubeflow Pipelines v2, compile: the one sparsectr pipeline as a KFP v2 PipelineSpec YAML.

The pipeline is the same ``create_pipeline(config, ...)`` that ``python -m pipelines run`` executes
locally, with its per-run settings as runtime parameters (``pipelines.runtime_parameters``); TFX's
``KubeflowV2DagRunner`` compiles it into a PipelineSpec (schema 2.1.0, what ``kfp.Client`` and the
open-source KFP v2 backend take) whose every step runs in the pipeline image (``kubeflow.image``).
The runtime parameters' defaults come from the config and are written into the spec (root
inputDefinitions), so a run needs no parameters. The pipeline has no TFX Resolver node: open-source
KFP v2 cannot run them.

Where models go: the Pusher writes ``<serving.serving_dir>/<model>/<version>/``, which TF Serving
must read. Either an object-store URI (gs://, s3://: TF's filesystems, the same URI in TF Serving's
models.config), or a local path backed by ``kubeflow.serving_volume_claim``: the compiled file then
carries a KFP PlatformSpec (kfp-kubernetes' KubernetesExecutorConfig, the second YAML document) that
mounts the claim at serving_dir in the Pusher and LatestPushedModel pods. A local serving_dir that no
step mounts is refused.

TensorFlow and TFX are imported inside the functions that need them.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

# Layout of the pipeline image (Dockerfile): the project's packages live under /app.
IMAGE_APP_ROOT = "/app"


def schema_file_in_image(spec, config) -> str:
    """Path of the curated schema as the pipeline's containers see it.

    A built-in spec's schema is committed under components/schemas/ and copied into the image
    (/app/components/schemas/<name>/schema.pbtxt). A user spec's schema is written at compile time
    under the pipeline root (a bucket every step can read).
    """
    from components.schema import SCHEMAS_DIR, builtin_spec_names, schema_text
    if spec.name in builtin_spec_names() and os.path.exists(os.path.join(SCHEMAS_DIR, spec.name, "schema.pbtxt")):
        return "/".join([IMAGE_APP_ROOT, "components", "schemas", spec.name, "schema.pbtxt"])
    from tfx.dsl.io import fileio
    path = "/".join([config.kubeflow.pipeline_root.rstrip("/"), "schema", spec.name, "schema.pbtxt"])
    fileio.makedirs(os.path.dirname(path))
    with fileio.open(path, "w") as f:
        f.write(schema_text(spec))
    return path


def is_object_store(path: str) -> bool:
    """A URI TF's filesystems reach from any pod (gs://, s3://, hdfs://, ...), not a path in the pod."""
    return "://" in (path or "")


def check_kubeflow_config(config) -> None:
    """What a run inside the cluster needs and the local defaults do not give; one-line ValueErrors."""
    if not config.data.data_root:
        raise ValueError("data.data_root is not set: give the click-log folder the cluster reads "
                         "(e.g. gs://BUCKET/clicks) with --data or in the config; Kubeflow runs do not "
                         "generate data")
    if not config.serving.serving_dir:
        raise ValueError("serving.serving_dir is not set: give the model base folder TF Serving reads "
                         "(e.g. gs://BUCKET/models or /models) in the config")
    serving_dir, claim = config.serving.serving_dir, config.kubeflow.serving_volume_claim
    if not is_object_store(serving_dir):
        if not claim:
            raise ValueError(f"serving.serving_dir {serving_dir} is a local path that no Kubeflow step mounts: set "
                             f"kubeflow.serving_volume_claim to the ReadWriteMany PVC TF Serving reads (it is mounted "
                             f"at {serving_dir} in the Pusher and LatestPushedModel), or use gs://... or s3://...")
        if not os.path.isabs(serving_dir) or serving_dir.rstrip("/") in ("", "/"):
            raise ValueError(f"serving.serving_dir {serving_dir}: a volume mount path must be an absolute "
                             f"folder other than / (e.g. /models)")
    elif claim:
        raise ValueError(f"kubeflow.serving_volume_claim {claim} is set but serving.serving_dir {serving_dir} is "
                         f"an object-store URI: the Pusher writes there, not to the volume; drop one of the two")
    if not config.kubeflow.image:
        raise ValueError("kubeflow.image is not set")
    if not config.kubeflow.pipeline_root:
        raise ValueError("kubeflow.pipeline_root is not set")


def local_path_warnings(config) -> List[str]:
    """data.data_root without a scheme: ExampleGen's pod sees it only if the image has it.

    (A local serving.serving_dir is refused by check_kubeflow_config unless it is mounted.)
    """
    value = config.data.data_root
    if value and not is_object_store(value):
        return [f"warning: data.data_root {value} is a local path: ExampleGen's pod must have it (the compiled "
                f"spec mounts only kubeflow.serving_volume_claim; use gs://... or s3://...)"]
    return []


# The steps that read or write the serving folder: the Pusher publishes versions and models.config
# into it, LatestPushedModel reads the newest version (warm start, baseline).
SERVING_DIR_STEPS = ("Pusher", "LatestPushedModel")


def serving_volume_platform_spec(config, pipeline_spec: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The KFP PlatformSpec (kfp-kubernetes' KubernetesExecutorConfig) that mounts
    kubeflow.serving_volume_claim at serving.serving_dir in SERVING_DIR_STEPS; None without a claim."""
    claim = config.kubeflow.serving_volume_claim
    if not claim:
        return None
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s
    from kfp.pipeline_spec import pipeline_spec_pb2
    executors = {}
    for task in SERVING_DIR_STEPS:
        component = pipeline_spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]
        label = pipeline_spec["components"][component]["executorLabel"]
        mount = k8s.KubernetesExecutorConfig(pvc_mount=[k8s.PvcMount(constant=claim, mount_path=config.serving_dir)])
        executors[label] = json_format.MessageToDict(mount)
    platform = {"platforms": {"kubernetes": {"deploymentSpec": {"executors": executors}}}}
    json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())  # fails here, not on the server
    return platform


def kubeflow_pipeline(config):
    """`create_pipeline(config)` for Kubeflow: runtime parameters, in-image schema, the KFP pipeline root."""
    from components.dataset_spec import load_spec
    from pipelines.pipeline import create_pipeline

    check_kubeflow_config(config)
    spec = load_spec(config.data.dataset_format)
    # The per-run settings (pipelines.runtime_parameters) become runtime parameters defaulting to
    # the config's values; outputs of every step go under the KFP pipeline root.
    return create_pipeline(config, config.data.data_root, spec=spec, schema_file=schema_file_in_image(spec, config),
                           runtime_parameters=True, pipeline_root=config.kubeflow.pipeline_root)


def _runtime_defaults(pipeline) -> Dict[str, Any]:
    from tfx.orchestration import data_types
    defaults = {}
    for component in pipeline.components:
        for value in component.exec_properties.values():
            if isinstance(value, data_types.RuntimeParameter) and value.default is not None:
                defaults[value.name] = value.default
    return defaults


def compile_pipeline(config, output_path: str) -> str:
    """Writes the KFP v2 PipelineSpec YAML of the pipeline to `output_path` and returns the path."""
    if not output_path.endswith((".yaml", ".yml")):
        raise ValueError(f"--output {output_path}: must end with .yaml (a KFP PipelineSpec)")
    import yaml
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    from tfx import version as tfx_version
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    pipeline = kubeflow_pipeline(config)
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(
            default_image=config.kubeflow.image,
            # Schema 2.1.0: typed parameters (parameterType), what the KFP v2 backend and kfp 2.x take.
            use_pipeline_spec_2_1=True),
        output_dir=os.path.dirname(os.path.abspath(output_path)),
        output_filename=os.path.basename(output_path))
    job = runner.run(pipeline, write_out=False)
    spec = job["pipelineSpec"]
    # TFX puts defaults only into a PipelineJob's runtime config, which a PipelineSpec file lacks:
    # write them into the root inputs so that a run (and a recurring run) needs no parameters.
    params = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    for name, default in _runtime_defaults(pipeline).items():
        if name in params:
            params[name]["defaultValue"] = default
            params[name]["isOptional"] = True
    spec["defaultPipelineRoot"] = config.kubeflow.pipeline_root
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())  # fails here, not on the server
    platform = serving_volume_platform_spec(config, spec)
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    # As kfp's own compiler writes it: the PipelineSpec, then (when there is one) the PlatformSpec as a
    # second YAML document; kfp.Client sends both.
    comments = kubeflow_v2_dag_runner._extract_comments_from_pipeline_spec(  # pylint: disable=protected-access
        spec, f"sparsectr pipeline, converted from TFX by tfx-{tfx_version.__version__}")
    with open(output_path, "w", encoding="utf-8") as f:
        f.write(comments)
        yaml.dump_all([spec] + ([platform] if platform else []), f, sort_keys=True)
    return output_path
