"""k8s/training: the Trainer as a Kubeflow Training Operator TFJob, rendered and checked offline.

The TFJob is a custom resource (kubeflow.org/v1): its own fields are checked against the Training
Operator's CRD (manifests/base/crds/kubeflow.org_tfjobs.yaml: spec.runPolicy, successPolicy,
enableDynamicWorker, tfReplicaSpecs.<type>.{replicas, restartPolicy, template}), and each replica's
pod template strictly against the Kubernetes OpenAPI schemas (as a core/v1 PodTemplate), locked down
like every other workload here. The TF_CONFIG the operator gives each pod of the job is then fed to
components.distributed: it picks the strategy the manifest is meant for.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAINING = os.path.join(REPO_ROOT, "k8s", "training")
K8S_VERSION = "1.30.0"
KUBECTL = shutil.which("kubectl")
SPEC_PATH = "/mnt/run/trainer_spec.json"

# The TFJob fields of the Training Operator's CRD (kubeflow.org_tfjobs.yaml, v1).
TFJOB_SPEC_FIELDS = {"enableDynamicWorker", "runPolicy", "successPolicy", "tfReplicaSpecs"}
RUN_POLICY_FIELDS = {"activeDeadlineSeconds", "backoffLimit", "cleanPodPolicy", "schedulingPolicy", "suspend",
                     "ttlSecondsAfterFinished"}
REPLICA_FIELDS = {"replicas", "restartPolicy", "template"}
REPLICA_TYPES = {"Chief", "Master", "Worker", "PS", "Evaluator"}
RESTART_POLICIES = {"Always", "OnFailure", "Never", "ExitCode"}


@pytest.fixture(scope="module")
def rendered():
    if KUBECTL is None:
        pytest.skip("kubectl is not installed (needed for `kubectl kustomize`)")
    result = subprocess.run([KUBECTL, "kustomize", TRAINING], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def multi_worker_job():
    with open(os.path.join(TRAINING, "tfjob-multi-worker.yaml")) as f:
        return yaml.safe_load(f)


def tfjobs(rendered):
    jobs = [d for d in rendered if d["kind"] == "TFJob"]
    assert [j["metadata"]["name"] for j in jobs] == ["sparsectr-trainer-ps"]
    return jobs + [multi_worker_job()]


def check_tfjob(job):
    import kubernetes_validate

    assert job["apiVersion"] == "kubeflow.org/v1"
    spec = job["spec"]
    assert set(spec) <= TFJOB_SPEC_FIELDS and set(spec["runPolicy"]) <= RUN_POLICY_FIELDS
    assert spec["runPolicy"]["cleanPodPolicy"] == "All"  # workers and ps serve until removed
    commands = set()
    for replica_type, replica in spec["tfReplicaSpecs"].items():
        assert replica_type in REPLICA_TYPES and set(replica) <= REPLICA_FIELDS
        assert replica["restartPolicy"] in RESTART_POLICIES and replica["replicas"] >= 1
        template = replica["template"]
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                      "metadata": {"name": f"{job['metadata']['name']}-{replica_type.lower()}"},
                                      "template": template}, K8S_VERSION, strict=True)
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
        # The operator sets TF_CONFIG in the container named "tensorflow" (and its port "tfjob-port").
        (container,) = pod["containers"]
        assert container["name"] == "tensorflow"
        assert {"name": "tfjob-port", "containerPort": 2222, "protocol": "TCP"} in container["ports"]
        assert not any(e["name"] == "TF_CONFIG" for e in container.get("env", []))
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert ":" in container["image"].rsplit("/", 1)[-1] and not container["image"].endswith(":latest")
        for kind in ("cpu", "memory"):
            assert kind in container["resources"]["requests"] and kind in container["resources"]["limits"]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["run"]["persistentVolumeClaim"]["claimName"] == "sparsectr-training"
        assert mounts["run"]["mountPath"] == os.path.dirname(SPEC_PATH) and mounts["tmp"]["mountPath"] == "/tmp"
        assert template["metadata"]["labels"]["app.kubernetes.io/name"] == "sparsectr-trainer"
        commands.add(tuple(container["command"]))
    # One command for every pod: the Trainer executor on the one spec.
    assert commands == {("python", "-m", "components.trainer_job", SPEC_PATH)}


def test_objects_validate_and_the_tfjobs_follow_the_crd(rendered):
    import kubernetes_validate

    assert sorted(d["kind"] for d in rendered) == ["NetworkPolicy", "PersistentVolumeClaim", "TFJob"]
    for doc in rendered:
        assert doc["metadata"]["namespace"] == "sparsectr"
        if doc["kind"] != "TFJob":
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    for job in tfjobs(rendered):
        check_tfjob(job)


def test_a_misspelt_pod_field_is_caught(rendered):
    import kubernetes_validate

    job = tfjobs(rendered)[0]
    template = json.loads(json.dumps(job["spec"]["tfReplicaSpecs"]["PS"]["template"]))
    template["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(Exception):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"},
                                      "template": template}, K8S_VERSION, strict=True)


def test_network_policy_lets_the_job_pods_reach_each_other_only(rendered):
    (policy,) = [d for d in rendered if d["kind"] == "NetworkPolicy"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "sparsectr-trainer"}
    for rule, peers in ((policy["spec"]["ingress"][0], "from"), (policy["spec"]["egress"][0], "to")):
        assert rule[peers] == [{"podSelector": {"matchLabels": selector}}]
        assert rule["ports"] == [{"protocol": "TCP", "port": 2222}]


def operator_tf_config(job, replica_type, index):
    """TF_CONFIG as the Training Operator writes it: lower-case task types, one headless Service per pod."""
    name = job["metadata"]["name"]
    cluster = {}
    for kind, replica in job["spec"]["tfReplicaSpecs"].items():
        cluster[kind.lower()] = [f"{name}-{kind.lower()}-{i}.sparsectr.svc:2222" for i in range(replica["replicas"])]
    return json.dumps({"cluster": cluster, "task": {"type": replica_type.lower(), "index": index},
                       "environment": "cloud"})


def test_each_pod_gets_the_role_the_manifest_means(rendered, monkeypatch):
    from components import distributed

    ps_job, multi_worker = tfjobs(rendered)
    monkeypatch.setenv("TF_CONFIG", operator_tf_config(ps_job, "Chief", 0))
    assert distributed.auto_distribution() == distributed.PARAMETER_SERVER
    assert len(distributed.cluster()["ps"]) == 2 == ps_job["spec"]["tfReplicaSpecs"]["PS"]["replicas"]
    assert distributed.task() == ("chief", 0)
    assert not distributed.serve_if_cluster_task("parameter_server")  # the chief coordinates
    served = []
    monkeypatch.setattr(distributed.tf.distribute, "Server", lambda *a, **k: served.append(k) or _Joinable())
    for role in ("Worker", "PS"):
        monkeypatch.setenv("TF_CONFIG", operator_tf_config(ps_job, role, 1))
        assert distributed.serve_if_cluster_task("auto")
    assert [(k["job_name"], k["task_index"]) for k in served] == [("worker", 1), ("ps", 1)]
    monkeypatch.setenv("TF_CONFIG", operator_tf_config(multi_worker, "Worker", 1))
    assert distributed.auto_distribution() == distributed.MULTI_WORKER
    assert not distributed.serve_if_cluster_task("auto")  # every multi-worker task runs run_fn


class _Joinable:
    def join(self):
        return None
