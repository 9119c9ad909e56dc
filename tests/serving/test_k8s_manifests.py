"""The Kubernetes manifests, rendered with `kubectl kustomize` and checked offline.

Every object of every overlay must validate in strict mode against the Kubernetes OpenAPI schemas
bundled with `kubernetes-validate`; every container must be locked down; the TF Serving config files
must parse as TF Serving's protos and agree with the pipeline's config (model name, serving paths).
"""
from __future__ import annotations

import copy
import os
import shutil
import subprocess

import pytest
import yaml

from pipelines.config import PipelineConfig, ServingConfig, load_config
from serving import tf_serving_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERLAYS = ("dev", "prod")
K8S_VERSION = "1.30.0"  # the oldest Kubernetes minor still in upstream support when these were written
KUBECTL = shutil.which("kubectl")

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed (needed for `kubectl kustomize`)")


def render(overlay: str):
    result = subprocess.run([KUBECTL, "kustomize", os.path.join(REPO_ROOT, "k8s", "overlays", overlay)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered():
    return {overlay: render(overlay) for overlay in OVERLAYS}


def objects(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind, name_prefix=""):
    found = [d for d in objects(docs, kind) if d["metadata"]["name"].startswith(name_prefix)]
    assert len(found) == 1, f"expected one {kind} {name_prefix!r}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_specs(docs):
    """(owner name, pod spec) of every workload."""
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]
        elif d["kind"] == "CronJob":
            yield d["metadata"]["name"], d["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def config_file(docs, configmap_prefix, key):
    return one(docs, "ConfigMap", configmap_prefix)["data"][key]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_strictly(rendered, overlay):
    import kubernetes_validate

    kinds = sorted({d["kind"] for d in rendered[overlay]})
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap",
            "CronJob", "ServiceAccount", "Role", "RoleBinding", "Namespace"} <= set(kinds)
    for doc in rendered[overlay]:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert doc["metadata"].get("namespace", overlay) == {"dev": "sparsectr-dev", "prod": "sparsectr"}[overlay] \
            or doc["kind"] == "Namespace"


def test_strict_validation_rejects_a_misspelt_field(rendered):
    """Guards the check above: an unknown field (a typo like `readOnlyRootFileSystem`) must fail."""
    import kubernetes_validate

    deployment = copy.deepcopy(one(rendered["prod"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down(rendered, overlay):
    specs = list(pod_specs(rendered[overlay]))
    assert {name for name, _ in specs} == {"tfserving-ctr", "sparsectr-pipeline"}
    for owner, spec in specs:
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True, owner
        assert pod_security["seccompProfile"]["type"] == "RuntimeDefault", owner
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{owner}/{container['name']}"
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True, where
            assert security.get("runAsUser", pod_security.get("runAsUser", 0)) != 0, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security.get("privileged", False) is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert not security["capabilities"].get("add"), where
            assert security["seccompProfile"]["type"] == "RuntimeDefault", where
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{where}: unpinned {image}"
            resources = container["resources"]
            for kind in ("cpu", "memory"):
                assert kind in resources["requests"] and kind in resources["limits"], where
            # A read-only root needs a writable /tmp for TensorFlow and Python.
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), where
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), owner
    namespace = one(rendered[overlay], "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tf_serving_deployment(rendered, overlay):
    docs = rendered[overlay]
    model_name = ServingConfig().model_name
    deployment = one(docs, "Deployment", "tfserving")
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["image"].startswith("tensorflow/serving:2.")
    assert container["command"] == ["/usr/bin/tensorflow_model_server"]
    args_list = [a.lstrip("-").split("=", 1)[0] for a in container["args"]]
    assert len(args_list) == len(set(args_list))
    # TF Serving takes either --model_config_file or --model_name/--model_base_path, not both.
    assert not {"model_name", "model_base_path"} & set(args_list)
    args = dict(a.lstrip("-").split("=", 1) for a in container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert int(args["rest_api_port"]) == ports["http"] and int(args["port"]) == ports["grpc"]
    assert int(args["model_config_file_poll_wait_seconds"]) > 0
    assert args["enable_batching"] == "true"
    assert not spec["automountServiceAccountToken"]

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = container[probe]["httpGet"]
        assert http["path"] == f"/v1/models/{model_name}", probe
        assert http["port"] in ("http", ports["http"]), probe

    # The three TF Serving files come from the mounted ConfigMap and parse as TF Serving's protos.
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    config_dir = os.path.dirname(args["model_config_file"])
    config_volume = next(name for name, m in mounts.items() if m["mountPath"] == config_dir)
    configmap = volumes[config_volume]["configMap"]["name"]
    assert configmap.startswith("tfserving-config-")  # kustomize's content-hashed name, so edits roll Pods
    data = one(docs, "ConfigMap", configmap)["data"]
    for flag in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
        assert os.path.dirname(args[flag]) == config_dir and os.path.basename(args[flag]) in data, flag

    models = tf_serving_config.parse_model_config(data[os.path.basename(args["model_config_file"])]).model_config_list
    assert [m.name for m in models.config] == [model_name]
    model = models.config[0]
    models_mount = mounts["models"]
    assert models_mount["readOnly"] is True
    # The Pusher writes <serving_dir>/<model_name>/<version>/; TF Serving's base_path is that folder.
    assert model.base_path == os.path.join(models_mount["mountPath"], model_name)
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest"

    batching = tf_serving_config.parse_batching_parameters(data[os.path.basename(args["batching_parameters_file"])])
    assert batching.max_batch_size.value >= 64
    monitoring = tf_serving_config.parse_monitoring_config(data[os.path.basename(args["monitoring_config_file"])])
    assert monitoring.prometheus_config.enable
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == monitoring.prometheus_config.path == tf_serving_config.PROMETHEUS_PATH
    assert int(annotations["prometheus.io/port"]) == ports["http"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_hpa_pdb_and_network_policy_select_the_serving_pods(rendered, overlay):
    docs = rendered[overlay]
    deployment = one(docs, "Deployment", "tfserving")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"]: p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}

    service = one(docs, "Service", "tfserving")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(container_ports)

    hpa = one(docs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]

    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # The budget must leave room for a drain at the smallest size the autoscaler allows.
    if "minAvailable" in pdb["spec"]:
        assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]

    policy = one(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == set(container_ports.values())
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_recurring_run_cronjob_and_rbac(rendered, overlay, tmp_path):
    docs = rendered[overlay]
    cronjob = one(docs, "CronJob")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    if overlay == "prod":
        assert not cronjob["spec"].get("suspend", False)
    spec = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["command"][-2:] == ["pipelines", "submit"]
    assert container["image"] == PipelineConfig().kubeflow.image

    # The CronJob's ServiceAccount is bound to a Role that lets it create Kubeflow Pipelines runs.
    account = spec["serviceAccountName"]
    binding = one(docs, "RoleBinding")
    assert {"kind": "ServiceAccount", "name": account} in [
        {k: s[k] for k in ("kind", "name")} for s in binding["subjects"]]
    role = one(docs, "Role")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert any("runs" in rule["resources"] and "create" in rule["verbs"] for rule in role["rules"])
    assert not any("*" in rule["verbs"] or "*" in rule["resources"] for rule in role["rules"])

    # The mounted pipeline config is a valid pipelines/config.py overlay that pushes where TF Serving reads.
    config_arg = container["args"][container["args"].index("--config") + 1]
    mount = next(m for m in container["volumeMounts"] if config_arg.startswith(m["mountPath"] + "/"))
    configmap = next(v["configMap"]["name"] for v in spec["volumes"] if v["name"] == mount["name"])
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(config_file(docs, configmap, os.path.basename(config_arg)))
    config = load_config(str(config_path))
    deployment = one(docs, "Deployment", "tfserving")
    models_mount = next(m for m in deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
                        if m["name"] == "models")
    assert config.serving.model_name == ServingConfig().model_name
    assert config.serving_dir == models_mount["mountPath"]


def test_write_model_config_round_trips_and_is_atomic(tmp_path):
    path = tf_serving_config.write_model_config(str(tmp_path), "ctr", model_base_path="/models/ctr", latest_versions=2)
    assert path == str(tmp_path / "models.config")
    config = tf_serving_config.read_model_config(path)
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("ctr", "/models/ctr", "tensorflow")
    assert model.model_version_policy.latest.num_versions == 2
    assert os.listdir(tmp_path) == ["models.config"]  # no temp file left behind

    pinned = tf_serving_config.read_model_config(
        tf_serving_config.write_model_config(str(tmp_path), "ctr", versions=[7]))
    assert list(pinned.model_config_list.config[0].model_version_policy.specific.versions) == [7]
    assert pinned.model_config_list.config[0].base_path == os.path.join(str(tmp_path), "ctr")


@pytest.mark.parametrize("text, message", [
    ("model_config_list { config { name: 'ctr' base_pth: '/m' } }", "base_pth"),
    ("model_config_list { config { name: 'ctr' } }", "base_path"),
])
def test_bad_model_config_is_refused(text, message):
    with pytest.raises(tf_serving_config.ConfigError, match=message):
        tf_serving_config.parse_model_config(text)


@pytest.mark.parametrize("text, message", [
    ("max_batch_size { value: 64 }\nnum_batch_threads { value: 2 }\nbatch_timeout_micro { value: 1 }",
     "batch_timeout_micro"),
    ("max_batch_size { value: 64 }\nnum_batch_threads { value: 2 }\nallowed_batch_sizes: 32", "must equal"),
    ("max_batch_size { value: 64 }\nnum_batch_threads { value: 2 }\nallowed_batch_sizes: 64\nallowed_batch_sizes: 8",
     "increasing"),
])
def test_bad_batching_config_is_refused(text, message):
    with pytest.raises(tf_serving_config.ConfigError, match=message):
        tf_serving_config.parse_batching_parameters(text)


def test_generated_configs_match_the_committed_ones():
    """The committed files are what the helpers generate, so the helpers are the documentation."""
    config_dir = os.path.join(REPO_ROOT, "k8s", "base", "config")

    def read(name):
        with open(os.path.join(config_dir, name), encoding="utf-8") as f:
            return f.read()

    assert tf_serving_config.parse_batching_parameters(read("batching.config")) == \
        tf_serving_config.parse_batching_parameters(tf_serving_config.batching_parameters_text())
    assert tf_serving_config.parse_monitoring_config(read("monitoring.config")) == \
        tf_serving_config.parse_monitoring_config(tf_serving_config.monitoring_config_text())
    assert tf_serving_config.parse_model_config(read("models.config")) == tf_serving_config.model_server_config(
        [{"name": ServingConfig().model_name, "base_path": "/models/" + ServingConfig().model_name}])
