"""Kubeflow Pipelines v2, client: submit a run or schedule a recurring run of a compiled pipeline.

Only kfp is imported (no TensorFlow or TFX). In the cluster, ``submit``/``schedule`` authenticate
with the projected ServiceAccount token (``token_file``, ``$KF_PIPELINES_SA_TOKEN_PATH`` or the
default projection path) through kfp's ServiceAccountTokenVolumeCredentials. Errors are one line:
``ValueError`` for bad arguments or files, ``EndpointError`` for what the endpoint answered.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import warnings
from typing import Any, Dict, Optional, Sequence

from pipelines import runtime_parameters as runtime

DEFAULT_EXPERIMENT = "sparsectr"


class EndpointError(ValueError):
    """The KFP endpoint cannot be reached or refused the request; the message is one line."""


# -- the compiled package --------------------------------------------------------------------------

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


# -- arguments of a run ----------------------------------------------------------------------------

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
        if name not in runtime.NAMES:
            raise ValueError(f"--param {name}: not a runtime parameter of the pipeline ({', '.join(runtime.NAMES)})")
        if name in (runtime.SPAN_WINDOW,):
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"--param {name}={value}: expected an integer >= 1")
            params[name] = int(value)
        elif name == runtime.MAX_BAD_FRACTION:
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
    param = spec.root.input_definitions.parameters.get(runtime.TRAINER_CONFIG)
    if param is None or not param.default_value.string_value:
        raise ValueError(f"the package has no {runtime.TRAINER_CONFIG} parameter with a default: recompile it")
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
    return {runtime.TRAINER_CONFIG: json.dumps(custom_config, sort_keys=True)}


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


def check_endpoint(endpoint: str) -> None:
    """Syntax of an endpoint URL (checked before a compile that takes a while)."""
    if not re.match(r"^https?://[^/\s]+", endpoint or ""):
        raise ValueError(f"--endpoint {endpoint!r}: expected http(s)://HOST[:PORT][/PATH]")


def make_client(endpoint: str, namespace: Optional[str] = None, token_file: Optional[str] = None):
    """`kfp.Client(host=endpoint)` with the ServiceAccount token of `token_path` (when there is one) as
    credentials; connects at once (healthz), so an unreachable endpoint fails here."""
    if not endpoint:
        raise ValueError("no Kubeflow Pipelines endpoint: pass --endpoint URL or set kubeflow.endpoint in the config")
    check_endpoint(endpoint)
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
