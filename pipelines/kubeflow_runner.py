"""Kubeflow Pipelines v2: compile the one sparsectr pipeline, submit a run, schedule a recurring run.

`python -m pipelines compile | submit | schedule` (see docs/kubeflow.md). The pipeline is the same
`create_pipeline(config, ...)` that `python -m pipelines run` executes locally; here it is compiled by
TFX's `KubeflowV2DagRunner` into a KFP v2 PipelineSpec YAML (schema 2.1.0, what `kfp.Client` and the
open-source KFP v2 backend take) whose every step runs in the pipeline image (`kubeflow.image`).

Runtime parameters of the compiled pipeline (override per run with `--param NAME=VALUE`):

  data_root              str    ClickLogExampleGen input_base (folder of the click logs / spans)
  span_window            int    newest N spans ingested per run
  max_bad_fraction       float  quarantine threshold of ExampleGen
  trainer_custom_config  str    the Trainer's custom_config JSON (model and optimizer hyperparameters)

Their defaults come from the config and are written into the spec (root inputDefinitions), so a run
needs no parameters. The pipeline has no TFX Resolver node: open-source KFP v2 cannot run them.

Where models go: the Pusher writes ``<serving.serving_dir>/<model>/<version>/``, which TF Serving
must read. Either an object-store URI (gs://, s3://: TF's filesystems, the same URI in TF Serving's
models.config), or a local path backed by ``kubeflow.serving_volume_claim``: the compiled file then
carries a KFP PlatformSpec (kfp-kubernetes' KubernetesExecutorConfig, the second YAML document) that
mounts the claim at serving_dir in the Pusher and LatestPushedModel pods. A local serving_dir that no
step mounts is refused. In the cluster, `submit`/`schedule` authenticate with the projected
ServiceAccount token (``--token-file``, ``$KF_PIPELINES_SA_TOKEN_PATH`` or the default projection
path) through kfp's ServiceAccountTokenVolumeCredentials.

Heavy imports (TensorFlow, TFX) happen only inside `compile`; `submit`/`schedule` of a compiled file
import only kfp.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from typing import Any, Dict, List, Optional, Sequence

# Layout of the pipeline image (Dockerfile): the project's packages live under /app.
IMAGE_APP_ROOT = "/app"
DEFAULT_PACKAGE = "sparsectr_pipeline.yaml"
DEFAULT_EXPERIMENT = "sparsectr"

PARAM_DATA_ROOT = "data_root"
PARAM_SPAN_WINDOW = "span_window"
PARAM_MAX_BAD_FRACTION = "max_bad_fraction"
PARAM_TRAINER_CONFIG = "trainer_custom_config"
RUNTIME_PARAMETERS = (PARAM_DATA_ROOT, PARAM_SPAN_WINDOW, PARAM_MAX_BAD_FRACTION, PARAM_TRAINER_CONFIG)


class EndpointError(ValueError):
    """The KFP endpoint cannot be reached or refused the request; the message is one line."""


# -- compile ---------------------------------------------------------------------------------------

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
    from tfx import v1 as tfx
    from components.click_log_example_gen.component import ClickLogExampleGen
    from components.dataset_spec import load_spec
    from pipelines.pipeline import create_pipeline

    check_kubeflow_config(config)
    RuntimeParameter = tfx.dsl.experimental.RuntimeParameter
    spec = load_spec(config.data.dataset_format)
    data_root = RuntimeParameter(name=PARAM_DATA_ROOT, ptype=str, default=config.data.data_root)
    pipeline = create_pipeline(config, data_root, spec=spec, schema_file=schema_file_in_image(spec, config))
    # Outputs of every step go under the KFP pipeline root, not the local output folder.
    pipeline.pipeline_info.pipeline_root = config.kubeflow.pipeline_root

    # Exec properties that create_pipeline sets from the config become runtime parameters whose
    # default is that value (the components validated them at construction).
    example_gen = next(c for c in pipeline.components if isinstance(c, ClickLogExampleGen))
    example_gen.exec_properties["span_window"] = RuntimeParameter(
        name=PARAM_SPAN_WINDOW, ptype=int, default=int(example_gen.exec_properties["span_window"]))
    example_gen.exec_properties["max_bad_fraction"] = RuntimeParameter(
        name=PARAM_MAX_BAD_FRACTION, ptype=float, default=float(example_gen.exec_properties["max_bad_fraction"]))
    trainer = next(c for c in pipeline.components if isinstance(c, tfx.components.Trainer))
    trainer.exec_properties["custom_config"] = RuntimeParameter(
        name=PARAM_TRAINER_CONFIG, ptype=str, default=trainer.exec_properties["custom_config"])
    return pipeline


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
    from tfx import v1 as tfx
    from tfx import version as tfx_version
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    pipeline = kubeflow_pipeline(config)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
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


def load_platform_spec(path: str):
    """The PlatformSpec of a compiled file (its second YAML document; empty when it has none), as kfp.Client reads it."""
    from kfp.client import client as kfp_client
    try:
        return kfp_client._extract_pipeline_yaml(path).platform_spec  # pylint: disable=protected-access
    except Exception as e:  # yaml, protobuf and type errors alike
        raise ValueError(f"--package {path}: its platform spec is not a KFP PlatformSpec "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def load_package(path: str):
    """The PipelineSpec of a compiled file; one-line ValueError when it is missing or not one."""
    import yaml
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    if not os.path.isfile(path):
        raise ValueError(f"--package {path}: no such file (compile it with `python -m pipelines compile`)")
    try:
        with open(path, encoding="utf-8") as f:
            doc = next(iter(yaml.safe_load_all(f)), None)
        spec = json_format.ParseDict(doc, pipeline_spec_pb2.PipelineSpec())
    except Exception as e:  # yaml, protobuf and type errors alike
        raise ValueError(f"--package {path}: not a KFP PipelineSpec YAML ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    load_platform_spec(path)
    return spec


# -- submit / schedule -----------------------------------------------------------------------------

_CRON_FIELDS = [  # (name, low, high) of the 6 fields KFP's scheduler (robfig/cron) takes
    ("second", 0, 59), ("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
    ("day of week", 0, 6)]
_NAMES = {"month": "JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC", "day of week": "SUN|MON|TUE|WED|THU|FRI|SAT"}


def normalize_cron(expression: str) -> str:
    """A 5-field (standard) or 6-field (with seconds, KFP's format) cron expression, as 6 fields.

    Raises ValueError (one line) on anything else: KFP would accept the request and never run it.
    """
    fields = (expression or "").split()
    if len(fields) == 5:
        fields = ["0"] + fields
    if len(fields) != 6:
        raise ValueError(f"--cron {expression!r}: expected 5 fields (minute hour day month weekday, "
                         f"e.g. '0 3 * * *') or 6 with seconds first, got {len((expression or '').split())}")
    for field, (name, low, high) in zip(fields, _CRON_FIELDS):
        names = _NAMES.get(name)
        for part in field.split(","):
            base, _, step = part.partition("/")
            if step and not (step.isdigit() and int(step) > 0):
                raise ValueError(f"--cron {expression!r}: bad step {step!r} in the {name} field")
            if base in ("*", "?") and (base == "*" or name in ("day of month", "day of week")):
                continue
            for value in base.split("-", 1):
                if names and re.fullmatch(names, value.upper()):
                    continue
                if not value.isdigit() or not low <= int(value) <= high:
                    raise ValueError(f"--cron {expression!r}: {value!r} is not a valid {name} ({low}-{high})")
    return " ".join(fields)


def parse_params(items: Sequence[str]) -> Dict[str, Any]:
    """`NAME=VALUE` pairs; values are JSON when they parse as a number, else strings."""
    params: Dict[str, Any] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--param {item!r}: expected NAME=VALUE")
        if name not in RUNTIME_PARAMETERS:
            raise ValueError(f"--param {name}: not a runtime parameter of the pipeline ({', '.join(RUNTIME_PARAMETERS)})")
        if name in (PARAM_SPAN_WINDOW,):
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"--param {name}={value}: expected an integer >= 1")
            params[name] = int(value)
        elif name == PARAM_MAX_BAD_FRACTION:
            try:
                params[name] = float(value)
            except ValueError:
                raise ValueError(f"--param {name}={value}: expected a number in [0, 1]") from None
        else:
            params[name] = value
    return params


def trainer_override(spec, items: Sequence[str]) -> Dict[str, Any]:
    """`--trainer-arg KEY=VALUE` pairs as a `trainer_custom_config` runtime parameter.

    Starts from the default compiled into the package and replaces fields of its TrainerConfig JSON
    (values parse as YAML scalars: 8, 0.002, true, [128, 64], dnn).
    """
    if not items:
        return {}
    import dataclasses
    import yaml
    from pipelines.config import TrainerConfig, validate
    known = {f.name for f in dataclasses.fields(TrainerConfig)}
    param = spec.root.input_definitions.parameters.get(PARAM_TRAINER_CONFIG)
    if param is None or not param.default_value.string_value:
        raise ValueError(f"the package has no {PARAM_TRAINER_CONFIG} parameter with a default: recompile it")
    custom_config = json.loads(param.default_value.string_value)
    trainer = json.loads(custom_config["trainer"])
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise ValueError(f"--trainer-arg {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(known))}")
        try:
            trainer[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError(f"--trainer-arg {item!r}: cannot parse the value") from None
    custom_config["trainer"] = validate(TrainerConfig(**trainer), "trainer").to_json()
    return {PARAM_TRAINER_CONFIG: json.dumps(custom_config, sort_keys=True)}


@contextlib.contextmanager
def _kfp_errors(endpoint: str):
    """Connection errors and API refusals as one-line EndpointErrors (no traceback, no retries' logs)."""
    import kfp_server_api
    import urllib3
    try:
        yield
    except kfp_server_api.ApiException as e:
        reason = (e.reason or "").strip() or "error"
        detail = ""
        try:
            detail = json.loads(e.body or "{}").get("message") or json.loads(e.body or "{}").get("error") or ""
        except (ValueError, AttributeError, TypeError):
            detail = (e.body or "")[:200] if isinstance(e.body, str) else ""
        detail = " ".join(str(detail).split())
        raise EndpointError(f"Kubeflow Pipelines at {endpoint} answered {e.status} {reason}"
                            + (f": {detail}" if detail else "")) from None
    except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or e
        text = re.sub(r"<[^>]*>:\s*", "", " ".join(str(reason).split())) or type(e).__name__
        raise EndpointError(f"cannot reach Kubeflow Pipelines at {endpoint}: {text}") from None


# In the cluster, KFP authenticates API calls with a projected ServiceAccount token of audience
# pipelines.kubeflow.org (k8s/base/pipeline-cronjob.yaml projects it here); kfp's
# ServiceAccountTokenVolumeCredentials reads it before every request (the kubelet rotates it).
TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
DEFAULT_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
TOKEN_AUDIENCE = "pipelines.kubeflow.org"


def token_path(explicit: Optional[str] = None) -> Optional[str]:
    """The KFP token file to authenticate with: --token-file, else $KF_PIPELINES_SA_TOKEN_PATH, else
    DEFAULT_TOKEN_PATH when it exists (in a pod that projects it), else None (no credentials)."""
    path = explicit or os.environ.get(TOKEN_PATH_ENV)
    if not path:
        return DEFAULT_TOKEN_PATH if os.path.isfile(DEFAULT_TOKEN_PATH) else None
    try:
        with open(path, encoding="utf-8") as f:
            if not f.read().strip():
                raise ValueError(f"--token-file {path}: the token file is empty")
    except OSError as e:
        raise ValueError(f"--token-file {path}: cannot read the KFP token: {e.strerror or e}") from None
    return path


def make_client(endpoint: str, namespace: Optional[str] = None, token_file: Optional[str] = None):
    """`kfp.Client(host=endpoint)` with the ServiceAccount token of `token_path` (when there is one) as
    credentials; connects at once (healthz), so an unreachable endpoint fails here."""
    if not endpoint:
        raise ValueError("no Kubeflow Pipelines endpoint: pass --endpoint URL or set kubeflow.endpoint in the config")
    if not re.match(r"^https?://[^/\s]+", endpoint):
        raise ValueError(f"--endpoint {endpoint!r}: expected http(s)://HOST[:PORT][/PATH]")
    import logging
    import kfp
    from kfp.client import ServiceAccountTokenVolumeCredentials
    path = token_path(token_file)
    credentials = {"credentials": ServiceAccountTokenVolumeCredentials(path)} if path else {}
    # kfp logs each failed healthz attempt with a traceback; the failure is reported in one line instead.
    logging.disable(logging.ERROR)
    try:
        with warnings.catch_warnings(), _kfp_errors(endpoint):
            warnings.simplefilter("ignore")
            return kfp.Client(host=endpoint, **({"namespace": namespace} if namespace else {}), **credentials)
    finally:
        logging.disable(logging.NOTSET)


def submit(package: str, endpoint: str, *, params: Optional[Dict[str, Any]] = None,
           run_name: Optional[str] = None, experiment: str = DEFAULT_EXPERIMENT,
           pipeline_root: Optional[str] = None, namespace: Optional[str] = None,
           service_account: Optional[str] = None, token_file: Optional[str] = None) -> Dict[str, Any]:
    """Creates one run of the compiled pipeline; returns its id and name."""
    spec = load_package(package)
    run_name = run_name or f"{spec.pipeline_info.name} {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H-%M-%S}"
    client = make_client(endpoint, namespace, token_file)
    with warnings.catch_warnings(), _kfp_errors(endpoint):
        warnings.simplefilter("ignore")
        result = client.create_run_from_pipeline_package(
            pipeline_file=package, arguments=params or {}, run_name=run_name, experiment_name=experiment,
            namespace=namespace, pipeline_root=pipeline_root, enable_caching=False,
            service_account=service_account)
    return {"run_id": result.run_id, "run_name": run_name, "experiment": experiment}


def schedule(package: str, endpoint: str, cron: str, *, params: Optional[Dict[str, Any]] = None,
             job_name: Optional[str] = None, experiment: str = DEFAULT_EXPERIMENT,
             pipeline_root: Optional[str] = None, namespace: Optional[str] = None,
             start_time: Optional[str] = None, service_account: Optional[str] = None,
             token_file: Optional[str] = None) -> Dict[str, Any]:
    """Creates a recurring run: one run per cron tick, at most one at a time, no catch-up of missed ticks."""
    cron6 = normalize_cron(cron)
    if start_time:
        try:
            datetime.datetime.fromisoformat(start_time.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"--start-time {start_time!r}: expected RFC 3339, e.g. 2026-12-01T03:00:00Z") from None
    spec = load_package(package)
    job_name = job_name or f"{spec.pipeline_info.name} retraining"
    client = make_client(endpoint, namespace, token_file)
    with warnings.catch_warnings(), _kfp_errors(endpoint):
        warnings.simplefilter("ignore")
        experiment_id = client.create_experiment(name=experiment, namespace=namespace).experiment_id
        job = client.create_recurring_run(
            experiment_id=experiment_id, job_name=job_name,
            description=f"sparsectr scheduled retraining ({cron6})", start_time=start_time,
            cron_expression=cron6, max_concurrency=1, no_catchup=True, params=params or {},
            pipeline_package_path=package, pipeline_root=pipeline_root, enable_caching=False,
            service_account=service_account)
    return {"recurring_run_id": job.recurring_run_id, "job_name": job_name, "cron": cron6,
            "experiment": experiment}


# -- CLI -------------------------------------------------------------------------------------------

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
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="KFP experiment (created if missing)")
    p.add_argument("--namespace", help="Kubernetes namespace (multi-user KFP)")
    p.add_argument("--service-account", help="Kubernetes service account of the run's pods")
    p.add_argument("--token-file", metavar="PATH",
                   help=f"ServiceAccount token (audience {TOKEN_AUDIENCE}) sent as the KFP credentials "
                        f"(default: ${TOKEN_PATH_ENV}, else {DEFAULT_TOKEN_PATH} when it exists)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help=f"runtime parameter override (repeatable): {', '.join(RUNTIME_PARAMETERS)}")
    p.add_argument("--trainer-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override one TrainerConfig field for this run (repeatable), e.g. epochs=8, "
                        "l21=0.002, optimizer=group_adagrad")


def _kubeflow_config(args):
    from pipelines.config import load_config
    if args.config and not os.path.isfile(args.config):
        raise ValueError(f"--config {args.config}: no such file")
    overrides: Dict[str, Any] = {"data": {}, "kubeflow": {}}
    if getattr(args, "data", None):
        overrides["data"]["data_root"] = args.data
    if getattr(args, "serving_dir", None):
        overrides["serving"] = {"serving_dir": args.serving_dir}
    if getattr(args, "image", None):
        overrides["kubeflow"]["image"] = args.image
    if getattr(args, "pipeline_root", None):
        overrides["kubeflow"]["pipeline_root"] = args.pipeline_root
    if getattr(args, "beam_preset", None):
        overrides["beam_preset"] = args.beam_preset
    if getattr(args, "beam_arg", None):
        overrides["beam_args"] = list(args.beam_arg)
    return load_config(args.config, overrides)


def _quiet() -> None:
    """TF/TFX start-up notices say nothing about a compile; errors still show."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)


def cmd_compile(args) -> int:
    config = _kubeflow_config(args)
    check_kubeflow_config(config)
    for line in local_path_warnings(config):
        print(line, file=sys.stderr)
    _quiet()
    path = compile_pipeline(config, args.output)
    claim = config.kubeflow.serving_volume_claim
    print(f"compiled {config.pipeline_name} -> {path} (image {config.kubeflow.image}, "
          f"pipeline root {config.kubeflow.pipeline_root}; models pushed to {config.serving_dir}"
          + (f" on volume claim {claim}, mounted in {' and '.join(SERVING_DIR_STEPS)})" if claim else ")"))
    return 0


def _package_and_config(args):
    """(package path, config or None, temp dir or None): --package as given, else compiled from --config."""
    if not args.package and not args.config:
        raise ValueError("give --package FILE (compiled) or --config FILE (compiled now)")
    config = _kubeflow_config(args) if args.config else None
    if args.package:
        load_package(args.package)  # fail on a bad file before anything else
        return args.package, config, None
    check_kubeflow_config(config)
    for line in local_path_warnings(config):
        print(line, file=sys.stderr)
    _quiet()
    tmp = tempfile.mkdtemp(prefix="sparsectr-kfp-")
    return compile_pipeline(config, os.path.join(tmp, DEFAULT_PACKAGE)), config, tmp


def _endpoint(args, config) -> str:
    return args.endpoint or (config.kubeflow.endpoint if config else None) or os.environ.get("KF_PIPELINES_ENDPOINT", "")


def cmd_submit(args) -> int:
    params = parse_params(args.param)
    token_path(args.token_file)  # an unreadable token fails before the compile
    if args.endpoint is not None:
        make_endpoint_check(args.endpoint)
    package, config, tmp = _package_and_config(args)
    try:
        params.update(trainer_override(load_package(package), args.trainer_arg))
        result = submit(package, _endpoint(args, config), params=params, run_name=args.run_name,
                        experiment=args.experiment, pipeline_root=config.kubeflow.pipeline_root if config else None,
                        namespace=args.namespace, service_account=args.service_account,
                        token_file=args.token_file)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))
    return 0


def cmd_schedule(args) -> int:
    params = parse_params(args.param)
    normalize_cron(args.cron)
    token_path(args.token_file)
    if args.endpoint is not None:
        make_endpoint_check(args.endpoint)
    package, config, tmp = _package_and_config(args)
    try:
        params.update(trainer_override(load_package(package), args.trainer_arg))
        result = schedule(package, _endpoint(args, config), args.cron, params=params, job_name=args.job_name,
                          experiment=args.experiment,
                          pipeline_root=config.kubeflow.pipeline_root if config else None,
                          namespace=args.namespace, start_time=args.start_time,
                          service_account=args.service_account, token_file=args.token_file)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))
    return 0


def make_endpoint_check(endpoint: str) -> None:
    """Syntax of an endpoint URL (before a compile that takes a while)."""
    if not re.match(r"^https?://[^/\s]+", endpoint or ""):
        raise ValueError(f"--endpoint {endpoint!r}: expected http(s)://HOST[:PORT][/PATH]")


def add_commands(sub) -> None:
    """Adds `compile`, `submit` and `schedule` to the `python -m pipelines` subcommands."""
    fmt = argparse.RawDescriptionHelpFormatter
    comp = sub.add_parser("compile", formatter_class=fmt,
                          help="compile the pipeline for Kubeflow Pipelines v2 (PipelineSpec YAML)",
                          description="Compile the pipeline with TFX's KubeflowV2DagRunner into a KFP v2 "
                                      "PipelineSpec YAML.\nRuntime parameters: " + ", ".join(RUNTIME_PARAMETERS))
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
