"""TF Serving's configuration files as protos: models.config, batching parameters, monitoring config.

``models.config`` is a ``ModelServerConfig`` text proto (tensorflow_serving's own
``model_server_config_pb2``); TF Serving re-reads it every ``--model_config_file_poll_wait_seconds``,
so the Pusher rewrites it atomically (temp file + rename) and a half-written file is never read. The
file is shared: other models, version pins and labels are the operator's, so a write changes one
model's entry and keeps the rest (read, merge and write under an exclusive lock), and the file is
0644 so that a model server running as another user can read it.

The batching (``--batching_parameters_file``) and monitoring (``--monitoring_config_file``) protos are
not shipped in the tensorflow-serving-api wheel. Their messages are mirrored below from TF Serving's
``session_bundle_config.proto`` and ``monitoring_config.proto`` (same field names and numbers) so that
a typo in a config file fails here, in a test, instead of at model-server start-up in a cluster.
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable, Iterable, Optional, Sequence, Set

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2  # noqa: F401  (registers google/protobuf/wrappers.proto)
from tensorflow_serving.config import model_server_config_pb2

from serving import file_lock

MODEL_CONFIG_FILE = "models.config"
CONFIG_FILE_MODE = 0o644  # TF Serving often runs as another user than the Pusher
DEFAULT_LOCK_TIMEOUT_S = 600.0
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


class ConfigError(ValueError):
    """A TF Serving config file that TF Serving would reject; the message names the file."""


# -- models.config --------------------------------------------------------------------------------
def model_server_config(models: Iterable[dict]) -> model_server_config_pb2.ModelServerConfig:
    """ModelServerConfig from dicts with name, base_path and optional latest_versions / versions.

    ``latest_versions=N`` serves the N newest versions (TF Serving's default policy with N=1);
    ``versions=[...]`` pins specific versions (a rollback).
    """
    config = model_server_config_pb2.ModelServerConfig()
    seen = set()
    for spec in models:
        name, base_path = spec["name"], spec["base_path"]
        if not name or "/" in name:
            raise ConfigError(f"model name {name!r} must be non-empty and contain no '/'")
        if name in seen:
            raise ConfigError(f"model {name!r} listed twice")
        seen.add(name)
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = base_path
        entry.model_platform = "tensorflow"
        versions = spec.get("versions")
        if versions:
            entry.model_version_policy.specific.versions.extend(int(v) for v in versions)
        else:
            latest = int(spec.get("latest_versions", 1))
            if latest < 1:
                raise ConfigError(f"model {name!r}: latest_versions must be >= 1, got {latest}")
            entry.model_version_policy.latest.num_versions = latest
    return config


def model_config_text(config: model_server_config_pb2.ModelServerConfig) -> str:
    return text_format.MessageToString(config)


def parse_model_config(text: str, source: str = "<models.config>") -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise ConfigError(f"{source}: not a ModelServerConfig text proto: {e}") from None
    for entry in config.model_config_list.config:
        if not entry.name or not entry.base_path:
            raise ConfigError(f"{source}: every model needs a name and a base_path")
    return config


def read_model_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    with open(path, encoding="utf-8") as f:
        return parse_model_config(f.read(), source=path)


def set_model_entry(config: model_server_config_pb2.ModelServerConfig, name: str, base_path: str,
                    latest_versions: Optional[int] = None, versions: Optional[Sequence[int]] = None,
                    ) -> model_server_config_pb2.ModelServerConfig:
    """A copy of `config` where model `name` is served from `base_path`; every other model is kept.

    An existing entry for `name` keeps its ``version_labels`` and, unless `latest_versions` or
    `versions` is given, its version policy (an operator's pin or rollback); a new entry serves the
    newest version unless told otherwise.
    """
    if not name or "/" in name:
        raise ConfigError(f"model name {name!r} must be non-empty and contain no '/'")
    if latest_versions is not None and not versions and int(latest_versions) < 1:
        raise ConfigError(f"model {name!r}: latest_versions must be >= 1, got {latest_versions}")
    merged = model_server_config_pb2.ModelServerConfig()
    merged.CopyFrom(config)
    entries = [e for e in merged.model_config_list.config if e.name == name]
    if not entries:
        entries = [merged.model_config_list.config.add(name=name, model_platform="tensorflow")]
        if not versions and latest_versions is None:
            latest_versions = 1
    for entry in entries:
        entry.base_path = base_path
        if not entry.model_platform:
            entry.model_platform = "tensorflow"
        if versions:
            entry.model_version_policy.specific.versions[:] = [int(v) for v in versions]
        elif latest_versions is not None:
            entry.model_version_policy.latest.num_versions = int(latest_versions)
    return merged


def pinned_versions(config: model_server_config_pb2.ModelServerConfig, name: str,
                    base_paths: Iterable[str] = ()) -> Set[int]:
    """Versions an operator pinned for a model -- named `name` or served from one of `base_paths`:
    those of a ``specific`` version policy and those ``version_labels`` point at."""
    paths = {os.path.normpath(p) for p in base_paths}
    pinned: Set[int] = set()
    for entry in config.model_config_list.config:
        if entry.name == name or os.path.normpath(entry.base_path) in paths:
            pinned.update(entry.model_version_policy.specific.versions)
            pinned.update(entry.version_labels.values())
    return pinned


def model_config_lock(path: str, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S):
    """Exclusive lock for a read-modify-write of the local models.config at `path`."""
    directory, name = os.path.split(os.path.abspath(path))
    return file_lock.exclusive(os.path.join(directory, f".{name}.lock"), timeout_s, what="models.config lock")


def update_model_config(path: str, change: Callable[[model_server_config_pb2.ModelServerConfig],
                                                    model_server_config_pb2.ModelServerConfig],
                        timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> model_server_config_pb2.ModelServerConfig:
    """Read the local models.config at `path` (empty if missing), apply `change`, write it back
    atomically, all under `model_config_lock`, so concurrent writers never lose each other's entries.
    Returns what was written."""
    with model_config_lock(path, timeout_s):
        config = read_model_config(path) if os.path.exists(path) else model_server_config_pb2.ModelServerConfig()
        config = change(config)
        _atomic_write(path, model_config_text(config))
    return config


def _atomic_write(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, CONFIG_FILE_MODE)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_model_config(base_dir: str, model_name: str, model_base_path: Optional[str] = None,
                       latest_versions: int = 1, versions: Optional[Sequence[int]] = None,
                       config_path: Optional[str] = None, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> str:
    """Set ``model_name``'s entry in ``<base_dir>/models.config``: served from ``<base_dir>/<model_name>``
    with the given version policy (`versions` pins specific versions: a rollback). Other models' entries
    and this model's version labels are kept.

    ``model_base_path`` overrides where TF Serving looks (e.g. the Pod's mount path, or gs://...), as
    the path seen by the model server can differ from the one the Pusher writes to. Returns the path.
    """
    base_path = model_base_path or os.path.join(os.path.abspath(base_dir), model_name)
    path = config_path or os.path.join(base_dir, MODEL_CONFIG_FILE)
    update_model_config(path, lambda config: set_model_entry(
        config, model_name, base_path, latest_versions=latest_versions, versions=versions), lock_timeout_s)
    return path


# -- batching and monitoring (mirrored messages) ------------------------------------------------
def _mirrored_messages():
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="sparsectr/tf_serving_mirror.proto", package="sparsectr.tf_serving_mirror",
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    F = descriptor_pb2.FieldDescriptorProto
    batching = file_proto.message_type.add(name="BatchingParameters")
    for number, (name, wrapper) in enumerate([
            ("max_batch_size", "Int64Value"), ("batch_timeout_micros", "Int64Value"),
            ("max_enqueued_batches", "Int64Value"), ("num_batch_threads", "Int64Value"),
            ("thread_pool_name", "StringValue")], start=1):
        batching.field.add(name=name, number=number, label=F.LABEL_OPTIONAL, type=F.TYPE_MESSAGE,
                           type_name=f".google.protobuf.{wrapper}")
    batching.field.add(name="allowed_batch_sizes", number=6, label=F.LABEL_REPEATED, type=F.TYPE_INT64)
    batching.field.add(name="pad_variable_length_inputs", number=7, label=F.LABEL_OPTIONAL, type=F.TYPE_BOOL)
    prometheus = file_proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, label=F.LABEL_OPTIONAL, type=F.TYPE_BOOL)
    prometheus.field.add(name="path", number=2, label=F.LABEL_OPTIONAL, type=F.TYPE_STRING)
    monitoring = file_proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, label=F.LABEL_OPTIONAL, type=F.TYPE_MESSAGE,
                         type_name=".sparsectr.tf_serving_mirror.PrometheusConfig")
    # The default pool already holds wrappers.proto; a module reload must not add the file twice.
    pool = descriptor_pool.Default()
    try:
        file_desc = pool.FindFileByName(file_proto.name)
    except KeyError:
        pool.Add(file_proto)
        file_desc = pool.FindFileByName(file_proto.name)
    factory = message_factory.MessageFactory(pool)
    return (factory.GetPrototype(file_desc.message_types_by_name["BatchingParameters"]),
            factory.GetPrototype(file_desc.message_types_by_name["MonitoringConfig"]))


BatchingParameters, MonitoringConfig = _mirrored_messages()


def batching_parameters_text(max_batch_size: int = 64, batch_timeout_micros: int = 2000,
                             max_enqueued_batches: int = 100, num_batch_threads: int = 4,
                             allowed_batch_sizes: Sequence[int] = (8, 16, 32, 64)) -> str:
    params = BatchingParameters()
    params.max_batch_size.value = max_batch_size
    params.batch_timeout_micros.value = batch_timeout_micros
    params.max_enqueued_batches.value = max_enqueued_batches
    params.num_batch_threads.value = num_batch_threads
    params.allowed_batch_sizes.extend(allowed_batch_sizes)
    check_batching_parameters(params, "<generated>")
    return text_format.MessageToString(params)


def check_batching_parameters(params, source: str) -> None:
    """TF Serving's own start-up checks on allowed_batch_sizes (batching_session.cc)."""
    sizes = list(params.allowed_batch_sizes)
    if params.max_batch_size.value < 1 or params.num_batch_threads.value < 1:
        raise ConfigError(f"{source}: max_batch_size and num_batch_threads must be >= 1")
    if sizes:
        if sizes != sorted(set(sizes)):
            raise ConfigError(f"{source}: allowed_batch_sizes must be strictly increasing, got {sizes}")
        if sizes[-1] != params.max_batch_size.value:
            raise ConfigError(f"{source}: the last allowed_batch_sizes entry ({sizes[-1]}) must equal "
                              f"max_batch_size ({params.max_batch_size.value})")


def parse_batching_parameters(text: str, source: str = "<batching.config>"):
    params = BatchingParameters()
    try:
        text_format.Parse(text, params)
    except text_format.ParseError as e:
        raise ConfigError(f"{source}: not a BatchingParameters text proto: {e}") from None
    check_batching_parameters(params, source)
    return params


def monitoring_config_text(path: str = PROMETHEUS_PATH) -> str:
    config = MonitoringConfig()
    config.prometheus_config.enable = True
    config.prometheus_config.path = path
    return text_format.MessageToString(config)


def parse_monitoring_config(text: str, source: str = "<monitoring.config>"):
    config = MonitoringConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise ConfigError(f"{source}: not a MonitoringConfig text proto: {e}") from None
    return config
