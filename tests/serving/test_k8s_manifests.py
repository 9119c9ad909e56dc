"""The Kubernetes manifests, rendered with `kubectl kustomize` and checked offline.

Every object of every overlay must validate in strict mode against the Kubernetes OpenAPI schemas
bundled with `kubernetes-validate`; every container must be locked down; the TF Serving config files
must parse as TF Serving's protos and agree with the pipeline's config (model name, serving paths).
"""
from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess

import pytest
import yaml

from pipelines.config import PipelineConfig, ServingConfig, load_config
from serving import tf_serving_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERLAYS = ("dev", "prod")  # models on the ReadWriteMany volume
OBJECT_STORE = "prod-object-store"  # prod with k8s/components/object-store-models
ALL_OVERLAYS = OVERLAYS + (OBJECT_STORE,)
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
    return {overlay: render(overlay) for overlay in ALL_OVERLAYS}


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


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_every_object_validates_strictly(rendered, overlay):
    import kubernetes_validate

    kinds = sorted({d["kind"] for d in rendered[overlay]})
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap",
            "CronJob", "ServiceAccount", "Role", "RoleBinding", "Namespace"} <= set(kinds)
    for doc in rendered[overlay]:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert doc["metadata"].get("namespace", overlay) == {"dev": "sparsectr-dev"}.get(overlay, "sparsectr") \
            or doc["kind"] == "Namespace"


def test_strict_validation_rejects_a_misspelt_field(rendered):
    """Guards the check above: an unknown field (a typo like `readOnlyRootFileSystem`) must fail."""
    import kubernetes_validate

    deployment = copy.deepcopy(one(rendered["prod"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
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
            if overlay.startswith("prod"):  # by digest, not by a tag that can move
                assert re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", image), f"{where}: not pinned by digest: {image}"
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
    # Scraped through the metrics proxy's own port, which forwards to TF Serving's REST port.
    proxy = next(c for c in spec["containers"] if c["name"] == "metrics-proxy")
    proxy_ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert int(annotations["prometheus.io/port"]) == proxy_ports["metrics"] != ports["http"]
    proxy_conf = one(docs, "ConfigMap", "tfserving-metrics-proxy")["data"]["metrics-proxy.conf"]
    assert f"listen {proxy_ports['metrics']};" in proxy_conf
    assert f"location = {monitoring.prometheus_config.path} {{" in proxy_conf
    assert f"proxy_pass http://127.0.0.1:{ports['http']};" in proxy_conf


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

    policy = one(docs, "NetworkPolicy", "tfserving")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == set(container_ports.values()) | {9102}
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
    assert container["image"].split("@")[0] == PipelineConfig().kubeflow.image
    # Every step of the run uses the CronJob's own image (pinned by digest in prod).
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["args"][container["args"].index("--image") + 1] == "$(PIPELINE_IMAGE)"
    assert env["PIPELINE_IMAGE"] == container["image"]
    # Its only credential: a projected token for Kubeflow Pipelines, no Kubernetes API token.
    assert spec["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    token_arg = container["args"][container["args"].index("--token-file") + 1]
    token_mount = next(m for m in container["volumeMounts"] if token_arg.startswith(m["mountPath"] + "/"))
    (source,) = volumes[token_mount["name"]]["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    assert token_arg == token_mount["mountPath"] + "/" + source["serviceAccountToken"]["path"]

    # The CronJob's ServiceAccount is bound to a Role that lets it create Kubeflow Pipelines runs.
    account = spec["serviceAccountName"]
    binding = one(docs, "RoleBinding")
    assert {"kind": "ServiceAccount", "name": account} in [
        {k: s[k] for k in ("kind", "name")} for s in binding["subjects"]]
    role = one(docs, "Role")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    # Exactly what `submit` calls: ListExperiments, CreateExperiment (first run only), CreateRun.
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == {("pipelines.kubeflow.org", "experiments", "list"),
                       ("pipelines.kubeflow.org", "experiments", "create"),
                       ("pipelines.kubeflow.org", "runs", "create")}

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


# -- network policies: NetworkPolicy semantics evaluated on the rendered objects ----------------------

def _selects(selector, labels) -> bool:
    """A LabelSelector (matchLabels, matchExpressions) against a label map; {} selects everything."""
    if not all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _peer_matches(peer, own_namespace, peer_namespace, peer_labels, peer_ip) -> bool:
    import ipaddress
    if "ipBlock" in peer:
        if peer_ip is None:
            return False
        block = peer["ipBlock"]
        address = ipaddress.ip_address(peer_ip)
        return address in ipaddress.ip_network(block["cidr"]) and \
            not any(address in ipaddress.ip_network(e) for e in block.get("except", []))
    if peer_namespace is None:  # an address outside the cluster
        return False
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": peer_namespace}):
            return False
    elif peer_namespace != own_namespace:
        return False
    return _selects(peer.get("podSelector") or {}, peer_labels or {})


def allowed(docs, pod_labels, direction, port, peer_namespace=None, peer_labels=None, peer_ip=None,
            protocol="TCP") -> bool:
    """Would the policies let traffic in (`Ingress`, from the peer) or out (`Egress`, to the peer) of a pod
    with `pod_labels` in the overlay's namespace, on `port`? (The Kubernetes NetworkPolicy rules: a pod
    selected by no policy of that direction is open; otherwise any rule of any selecting policy allows.)"""
    policies = [p for p in objects(docs, "NetworkPolicy") if _selects(p["spec"]["podSelector"], pod_labels)
                and direction in p["spec"].get("policyTypes", ["Ingress"])]
    if not policies:
        return True
    namespace = policies[0]["metadata"]["namespace"]
    for policy in policies:
        for rule in policy["spec"].get(direction.lower(), []):
            peers = rule.get("from" if direction == "Ingress" else "to")
            ports = rule.get("ports")
            if ports and not any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports):
                continue
            if not peers or any(_peer_matches(peer, namespace, peer_namespace, peer_labels, peer_ip) for peer in peers):
                return True
    return False


SERVING = {"app.kubernetes.io/name": "tfserving", "app.kubernetes.io/component": "serving"}
CLIENT = {"sparsectr/serving-client": "true"}
PROMETHEUS = {"app.kubernetes.io/name": "prometheus"}
KUBE_DNS = ("kube-system", {"k8s-app": "kube-dns"})
KFP_STEP = {"pipelines.kubeflow.org/v2_component": "true", "workflows.argoproj.io/workflow": "sparsectr-x"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_default_deny_and_a_policy_for_every_workload(rendered, overlay):
    docs = rendered[overlay]
    policies = objects(docs, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and
            set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} and not p["spec"].get("ingress")
            and not p["spec"].get("egress")]
    assert deny, "no default-deny policy"
    # Every workload (and the KFP step pods) is selected by a policy of its own besides the namespace-wide ones.
    own = [p for p in policies if p["spec"]["podSelector"] != {}]
    templates = [d["spec"]["template"]["metadata"]["labels"] for d in objects(docs, "Deployment")]
    templates += [d["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"] for d in objects(docs, "CronJob")]
    for labels in templates + [KFP_STEP]:
        assert any(_selects(p["spec"]["podSelector"], labels) for p in own), labels
    # No rule opens egress to everything: each has peers, ports, and no ipBlock wider than a /24.
    import ipaddress
    for policy in policies:
        for rule in policy["spec"].get("egress", []):
            assert rule.get("to") and rule.get("ports"), (policy["metadata"]["name"], rule)
            for peer in rule["to"]:
                if "ipBlock" in peer:
                    assert ipaddress.ip_network(peer["ipBlock"]["cidr"]).prefixlen >= 24, peer


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_tf_serving_predict_only_from_named_clients_and_metrics_only_from_prometheus(rendered, overlay):
    docs = rendered[overlay]
    own = one(docs, "Namespace")["metadata"]["name"]
    ingress = lambda port, ns, labels: allowed(docs, SERVING, "Ingress", port, ns, labels)  # noqa: E731
    for port in (8500, 8501):
        assert ingress(port, own, CLIENT), port
        assert ingress(port, "ctr-clients", CLIENT), port  # the named client namespace
        assert not ingress(port, own, {}), port  # unlabelled pods of the namespace
        assert not ingress(port, "elsewhere", CLIENT), port  # labelled pods of other namespaces
        assert not ingress(port, "monitoring", PROMETHEUS), port  # Prometheus cannot call predict
    assert ingress(9102, "monitoring", PROMETHEUS)
    assert not ingress(9102, "monitoring", {"app.kubernetes.io/name": "grafana"})
    assert not ingress(9102, own, CLIENT)  # clients do not get the metrics port
    # Out: names only (the models come from the volume).
    assert allowed(docs, SERVING, "Egress", 53, *KUBE_DNS, protocol="UDP")
    assert not allowed(docs, SERVING, "Egress", 443, peer_ip="8.8.8.8")
    assert not allowed(docs, SERVING, "Egress", 8888, "kubeflow", {"app": "ml-pipeline"})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cronjob_reaches_the_kfp_api_only_and_steps_their_named_endpoints(rendered, overlay):
    docs = rendered[overlay]
    cron = one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert allowed(docs, cron, "Egress", 8888, "kubeflow", {"app": "ml-pipeline"})
    assert allowed(docs, cron, "Egress", 53, *KUBE_DNS, protocol="UDP")
    assert not allowed(docs, cron, "Egress", 8888, "kubeflow", {"app": "ml-pipeline-ui"})
    assert not allowed(docs, cron, "Egress", 443, peer_ip="8.8.8.8")
    assert not allowed(docs, cron, "Egress", 8501, one(docs, "Namespace")["metadata"]["name"], SERVING)
    assert not allowed(docs, cron, "Ingress", 8080, "kubeflow", {})
    # The run's pods: the KFP services, the API server and the object store by address; nothing else.
    for port in (8887, 8888, 8080, 9000):
        assert allowed(docs, KFP_STEP, "Egress", port, "kubeflow", {"app": "anything"}), port
    assert allowed(docs, KFP_STEP, "Egress", 443, peer_ip="199.36.153.5")  # restricted.googleapis.com
    assert not allowed(docs, KFP_STEP, "Egress", 443, peer_ip="8.8.8.8")
    assert not allowed(docs, KFP_STEP, "Egress", 8501, one(docs, "Namespace")["metadata"]["name"], SERVING)
    assert not allowed(docs, KFP_STEP, "Ingress", 8080, "kubeflow", {})


def test_prod_overlay_pins_every_image_by_digest_with_kustomize_images(rendered):
    """The digests are kustomize `images:` entries (what `kustomize edit set image` writes), one per image
    of the base, so that one command per image updates them."""
    with open(os.path.join(REPO_ROOT, "k8s", "overlays", "prod", "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    entries = {i["name"]: i for i in kustomization["images"]}
    base_images = {c["image"].split(":")[0] for _, spec in pod_specs(render_base())
                   for c in spec.get("initContainers", []) + spec["containers"]}
    assert set(entries) == base_images
    for name, entry in entries.items():
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", entry["digest"]), entry
    for _, spec in pod_specs(rendered["prod"]):
        for container in spec["containers"]:
            name = container["image"].split("@")[0].rsplit(":", 1)[0]
            assert container["image"].endswith("@" + entries[name]["digest"]), container["image"]


def render_base():
    result = subprocess.run([KUBECTL, "kustomize", os.path.join(REPO_ROOT, "k8s", "base")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


# -- delivery: the Pusher writes where TF Serving reads ------------------------------------------------

@pytest.fixture(scope="module")
def compiled_from_overlay(rendered, tmp_path_factory):
    """{overlay: (config, PipelineSpec, PlatformSpec)} compiled from the pipeline config the CronJob mounts."""
    from kfp.client import client as kfp_client

    from pipelines import kubeflow_compile
    out, cache = {}, {}
    for overlay in ALL_OVERLAYS:
        cronjob = one(rendered[overlay], "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        container = cronjob["containers"][0]
        config_arg = container["args"][container["args"].index("--config") + 1]
        mount = next(m for m in container["volumeMounts"] if config_arg.startswith(m["mountPath"] + "/"))
        configmap = next(v["configMap"]["name"] for v in cronjob["volumes"] if v["name"] == mount["name"])
        text = config_file(rendered[overlay], configmap, os.path.basename(config_arg))
        if text not in cache:
            root = tmp_path_factory.mktemp(f"compiled-{overlay}")
            (root / "pipeline.yaml").write_text(text)
            config = load_config(str(root / "pipeline.yaml"))
            doc = kfp_client._extract_pipeline_yaml(kubeflow_compile.compile_pipeline(config, str(root / "p.yaml")))
            cache[text] = (config, doc.pipeline_spec, doc.platform_spec)
        out[overlay] = cache[text]
    return out


def _executor_mounts(platform_spec, pipeline_spec, task):
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s
    label = pipeline_spec.components[pipeline_spec.root.dag.tasks[task].component_ref.name].executor_label
    struct = platform_spec.platforms["kubernetes"].deployment_spec.executors[label]
    config = json_format.ParseDict(json_format.MessageToDict(struct), k8s.KubernetesExecutorConfig())
    return [(m.constant, m.mount_path) for m in config.pvc_mount]


def _on_volume(path, mounts):
    """(claim, path relative to the claim's root) of `path` under one of `mounts` [(claim, mount path)]."""
    for claim, mount_path in mounts:
        if path == mount_path or path.startswith(mount_path.rstrip("/") + "/"):
            return claim, os.path.relpath(path, mount_path)
    raise AssertionError(f"{path} is on none of the mounted volumes {mounts}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pusher_destination_and_tf_serving_base_path_are_the_same_storage(rendered, compiled_from_overlay, overlay):
    """From the compiled PipelineSpec (+ PlatformSpec) and the rendered manifests: the folder the Pusher
    writes <model>/<version>/ into and the folder TF Serving's models.config serves are one place on one
    ReadWriteMany claim; LatestPushedModel reads that place too."""
    import json as _json

    docs = rendered[overlay]
    config, pipeline_spec, platform_spec = compiled_from_overlay[overlay]
    model_name = config.serving.model_name
    tasks = pipeline_spec.root.dag.tasks
    base = _json.loads(tasks["Pusher"].inputs.parameters["push_destination"].runtime_value.constant.string_value)
    pushed_to = _on_volume(os.path.join(base["filesystem"]["base_directory"], model_name),
                           _executor_mounts(platform_spec, pipeline_spec, "Pusher"))
    latest = tasks["LatestPushedModel"].inputs.parameters["model_base"].runtime_value.constant.string_value
    read_from = _on_volume(latest, _executor_mounts(platform_spec, pipeline_spec, "LatestPushedModel"))

    deployment = one(docs, "Deployment", "tfserving")
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    args = dict(a.lstrip("-").split("=", 1) for a in container["args"])
    data = one(docs, "ConfigMap", "tfserving-config")["data"]
    models = tf_serving_config.parse_model_config(data[os.path.basename(args["model_config_file"])])
    (entry,) = [m for m in models.model_config_list.config if m.name == model_name]
    volumes = {v["name"]: v for v in spec["volumes"]}
    serving_mounts = [(volumes[m["name"]]["persistentVolumeClaim"]["claimName"], m["mountPath"])
                      for m in container["volumeMounts"] if "persistentVolumeClaim" in volumes[m["name"]]]
    served_from = _on_volume(entry.base_path, serving_mounts)

    assert pushed_to == served_from == read_from, (pushed_to, served_from, read_from)
    claim = served_from[0]
    pvc = one(docs, "PersistentVolumeClaim", claim)
    assert pvc["metadata"]["name"] == claim and "ReadWriteMany" in pvc["spec"]["accessModes"]
    # TF Serving only reads it; the run's pods are in the same namespace (a PVC is namespaced).
    assert all(m["readOnly"] for m in container["volumeMounts"] if m["name"] in
               [n for n, v in volumes.items() if "persistentVolumeClaim" in v])
    assert config.kubeflow.serving_volume_claim == claim


def test_object_store_overlay_pushes_and_serves_the_same_uri(rendered, compiled_from_overlay):
    """k8s/overlays/prod-object-store: no volume anywhere; the Pusher's <serving_dir>/<model> is TF Serving's
    base_path (gs://...), read through TF's filesystems; TF Serving may reach only the object store."""
    import json as _json

    docs = rendered[OBJECT_STORE]
    config, pipeline_spec, platform_spec = compiled_from_overlay[OBJECT_STORE]
    assert not platform_spec.platforms and config.kubeflow.serving_volume_claim is None
    assert not objects(docs, "PersistentVolumeClaim")
    tasks = pipeline_spec.root.dag.tasks
    base = _json.loads(tasks["Pusher"].inputs.parameters["push_destination"].runtime_value.constant.string_value)
    pushed_to = base["filesystem"]["base_directory"].rstrip("/") + "/" + config.serving.model_name
    assert pushed_to.startswith("gs://")
    assert tasks["LatestPushedModel"].inputs.parameters["model_base"].runtime_value.constant.string_value == pushed_to
    deployment = one(docs, "Deployment", "tfserving")
    spec = deployment["spec"]["template"]["spec"]
    assert not any("persistentVolumeClaim" in v for v in spec["volumes"])
    args = dict(a.lstrip("-").split("=", 1) for a in spec["containers"][0]["args"])
    data = one(docs, "ConfigMap", "tfserving-config")["data"]
    models = tf_serving_config.parse_model_config(data[os.path.basename(args["model_config_file"])])
    (entry,) = [m for m in models.model_config_list.config if m.name == config.serving.model_name]
    assert entry.base_path == pushed_to
    # The other TF Serving files are the base's (the component merges models.config only).
    assert {"batching.config", "monitoring.config"} <= set(data)
    assert allowed(docs, SERVING, "Egress", 443, peer_ip="199.36.153.4")
    assert not allowed(docs, SERVING, "Egress", 443, peer_ip="8.8.8.8")
    account = one(docs, "ServiceAccount", "tfserving")
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    assert "iam.gke.io/gcp-service-account" in account["metadata"]["annotations"]


# -- the metrics proxy, run with nginx in front of the serving process ----------------------------------

NGINX = shutil.which("nginx")


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (the metrics proxy's config is run with it)")
def test_metrics_proxy_answers_the_metrics_and_nothing_else(rendered, serving_base, tmp_path):
    import socket
    import time

    import requests

    from serving.local_server.server import LocalServer
    conf = one(rendered["prod"], "ConfigMap", "tfserving-metrics-proxy")["data"]["metrics-proxy.conf"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with LocalServer(serving_base, "ctr", rest_port=0, grpc_port=0) as server:
        # The committed config with this machine's ports and a temp folder instead of /tmp.
        local = conf.replace("listen 9102;", f"listen 127.0.0.1:{port};") \
            .replace("http://127.0.0.1:8501", f"http://127.0.0.1:{server.rest_port}").replace("/tmp/", f"{tmp_path}/")
        (tmp_path / "nginx.conf").write_text(local)
        proc = subprocess.Popen([NGINX, "-e", "stderr", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    metrics = requests.get(url + tf_serving_config.PROMETHEUS_PATH, timeout=2)
                    break
                except requests.ConnectionError:
                    assert proc.poll() is None, proc.stderr.read().decode()
                    time.sleep(0.05)
            assert metrics.status_code == 200 and "# TYPE" in metrics.text
            predict = requests.post(url + "/v1/models/ctr:predict", json={"instances": [{"b64": ""}]}, timeout=5)
            assert predict.status_code == 404
            assert requests.get(url + "/v1/models/ctr", timeout=5).status_code == 404
            assert requests.get(url + "/v1/models/ctr/metadata", timeout=5).status_code == 404
            assert requests.post(url + tf_serving_config.PROMETHEUS_PATH, data="x", timeout=5).status_code == 403
        finally:
            proc.terminate()
            proc.wait(timeout=10)
