"""Kubeflow Pipelines v2, offline: the compiled PipelineSpec, the requests `submit`/`schedule` send, the CLI's errors.

No KFP server: the requests are captured at kfp's HTTP boundary (kfp_server_api's REST client), after
kfp.Client has built and serialized them, and answered with the JSON a KFP v2 API server returns.
"""
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO_ROOT

IMAGE = "registry.example.com/sparsectr/pipeline:test"
PIPELINE_ROOT = "gs://test-bucket/sparsectr/pipeline_root"
DATA_ROOT = "gs://test-bucket/clicks"
SERVING_DIR = "gs://test-bucket/models"
EXPECTED_COMPONENTS = {"ClickLogExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "ValidationGate",
                       "Transform", "LatestPushedModel", "Trainer", "Evaluator", "SparsityGate", "ServingCheck",
                       "Pusher"}
CLAIM = "sparsectr-models"


def kubeflow_config():
    from pipelines.config import load_config
    return load_config(None, {
        "beam_preset": "dataflow",
        "beam_args": ["--max_num_workers=4"],
        "data": {"data_root": DATA_ROOT, "input_pattern": "day-{SPAN}/*", "span_window": 3},
        "trainer": {"epochs": 2, "l21": 0.002},
        "serving": {"serving_dir": SERVING_DIR},
        "kubeflow": {"image": IMAGE, "pipeline_root": PIPELINE_ROOT},
    })


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(path, YAML dict, PipelineSpec proto, the tfx pipeline) of one compile."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    from pipelines import kubeflow_compile
    config = kubeflow_config()
    path = str(tmp_path_factory.mktemp("kfp") / "pipeline.yaml")
    assert kubeflow_compile.compile_pipeline(config, path) == path
    with open(path) as f:
        doc = yaml.safe_load(f)
    spec = json_format.ParseDict(doc, pipeline_spec_pb2.PipelineSpec())  # strict: unknown fields fail
    return path, doc, spec, kubeflow_compile.kubeflow_pipeline(config)


def executors(doc):
    return doc["deploymentSpec"]["executors"]


def test_compiled_yaml_is_a_kfp_pipeline_spec(compiled):
    path, doc, spec, _ = compiled
    assert spec.schema_version == "2.1.0"
    assert spec.pipeline_info.name == "sparsectr"
    assert spec.default_pipeline_root == PIPELINE_ROOT
    # kfp.Client reads the file the same way before it sends it.
    from kfp.client import client as kfp_client
    assert kfp_client._extract_pipeline_yaml(path).pipeline_spec == spec


def test_every_artifact_type_imports_back_from_its_schema_title(compiled):
    """TFX's Kubeflow v2 entrypoint turns each input/output artifact's schema title back into a class
    with import_class_by_path (custom types: the title is the import path), in the step's pod."""
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as entrypoint
    from tfx.utils import import_utils
    _, _, spec, _ = compiled
    titles = set()
    for component in spec.components.values():
        for definitions in (component.input_definitions, component.output_definitions):
            titles.update(a.artifact_type.schema_title or yaml.safe_load(a.artifact_type.instance_schema)["title"]
                          for a in definitions.artifacts.values())
    assert {"sparsectr.GateReport", "sparsectr.ServingCheckReport", "system.HTML"} <= titles, titles
    from kfp.pipeline_spec import pipeline_spec_pb2
    for title in sorted(titles):
        cls = import_utils.import_class_by_path(
            entrypoint._retrieve_class_path(pipeline_spec_pb2.ArtifactTypeSchema(schema_title=title)))
        assert cls.TYPE_NAME == title or title.startswith("tfx."), (title, cls)
    with pytest.raises(ImportError, match="sparsectr.NoSuchType"):
        import_utils.import_class_by_path("sparsectr.NoSuchType")


def test_every_component_is_a_task_and_there_are_no_resolvers(compiled):
    _, doc, spec, pipeline = compiled
    from tfx.dsl.components.common import importer, resolver
    ids = {c.id for c in pipeline.components}
    assert EXPECTED_COMPONENTS <= ids
    assert set(spec.components) == ids
    assert set(spec.root.dag.tasks) == ids
    assert not any(isinstance(c, (resolver.Resolver, importer.Importer)) for c in pipeline.components)
    # Open-source KFP v2 runs container executors only: no resolver (nor importer) executors.
    assert set(executors(doc)) == {f"{i}_executor" for i in ids}
    for name, executor in executors(doc).items():
        assert set(executor) == {"container"}, name
        assert "resolver" not in json.dumps(executor).lower(), name
    # Dependencies as in the local pipeline.
    assert "ValidationGate" in spec.root.dag.tasks["Transform"].dependent_tasks
    assert set(spec.root.dag.tasks["Pusher"].inputs.artifacts) >= {"model", "model_blessing"}
    # The ServingCheck sits between the gates and the Pusher: it follows the SparsityGate's blessing and
    # its own blessing (with the checked export) is the Pusher's infra_blessing.
    check = spec.root.dag.tasks["ServingCheck"].inputs.artifacts
    assert check["model_blessing"].task_output_artifact.producer_task == "SparsityGate"
    assert check["model"].task_output_artifact.producer_task == "Trainer"
    infra = spec.root.dag.tasks["Pusher"].inputs.artifacts["infra_blessing"].task_output_artifact
    assert (infra.producer_task, infra.output_artifact_key) == ("ServingCheck", "blessing")
    limits = spec.root.dag.tasks["ServingCheck"].inputs.parameters
    from pipelines.config import ServingCheckConfig
    assert limits["max_p99_latency_ms"].runtime_value.constant.number_value == ServingCheckConfig().max_p99_latency_ms
    # An object-store serving_dir needs no volume: the file has no platform spec.
    from pipelines import kubeflow_client
    assert kubeflow_client.load_platform_spec(compiled[0]).platforms == {}


def test_every_step_runs_the_configured_image_with_the_beam_args(compiled):
    from pipelines.config import BEAM_PRESETS
    _, doc, _, pipeline = compiled
    beam_args = BEAM_PRESETS["dataflow"] + ["--max_num_workers=4"]
    from tfx.dsl.components.base.base_beam_component import BaseBeamComponent
    beam_ids = {c.id for c in pipeline.components if isinstance(c, BaseBeamComponent)}
    assert {"ClickLogExampleGen", "StatisticsGen", "Transform", "Evaluator"} <= beam_ids
    for name, executor in executors(doc).items():
        container = executor["container"]
        assert container["image"] == IMAGE, name
        assert container["command"] == ["python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
        if name[:-len("_executor")] in beam_ids:
            assert container["args"][-len(beam_args):] == beam_args, name
    # ExampleGen's driver (newest span resolution) runs in the image too, with the same Beam args.
    driver = executors(doc)["ClickLogExampleGen_executor"]["container"]["lifecycle"]["preCacheCheck"]
    assert driver["args"][-len(beam_args):] == beam_args


def test_each_beam_steps_pod_constructs_an_executor_that_skips_tfxs_sdist_on_a_direct_runner(compiled):
    """The pods run TFX's entrypoint, which imports the class named by --executor_class_path."""
    import importlib

    from components.beam_dependencies import NoSdistOnDirectRunner
    _, doc, _, pipeline = compiled
    from tfx.dsl.components.base.base_beam_component import BaseBeamComponent
    beam_ids = {c.id for c in pipeline.components if isinstance(c, BaseBeamComponent)}
    for step in sorted(beam_ids):
        args = executors(doc)[f"{step}_executor"]["container"]["args"]
        module, _, name = args[args.index("--executor_class_path") + 1].rpartition(".")
        assert issubclass(getattr(importlib.import_module(module), name), NoSdistOnDirectRunner), step


def test_runtime_parameters_with_config_defaults(compiled):
    _, _, spec, _ = compiled
    from kfp.pipeline_spec import pipeline_spec_pb2
    types = pipeline_spec_pb2.ParameterType
    params = spec.root.input_definitions.parameters
    assert set(params) == {"data_root", "span_window", "max_bad_fraction", "trainer_custom_config"}
    assert params["data_root"].parameter_type == types.STRING
    assert params["data_root"].default_value.string_value == DATA_ROOT
    assert params["span_window"].parameter_type == types.NUMBER_INTEGER
    assert params["span_window"].default_value.number_value == 3
    assert params["max_bad_fraction"].parameter_type == types.NUMBER_DOUBLE
    assert params["max_bad_fraction"].default_value.number_value == 0.01
    trainer = json.loads(json.loads(params["trainer_custom_config"].default_value.string_value)["trainer"])
    assert (trainer["epochs"], trainer["l21"], trainer["optimizer"]) == (2, 0.002, "group_adam")
    assert all(p.is_optional for p in params.values())

    tasks = spec.root.dag.tasks
    gen = tasks["ClickLogExampleGen"].inputs.parameters
    assert gen["input_base"].component_input_parameter == "data_root"
    assert gen["span_window"].component_input_parameter == "span_window"
    assert gen["max_bad_fraction"].component_input_parameter == "max_bad_fraction"
    assert "day-{SPAN}/*" in gen["input_config"].runtime_value.constant.string_value
    assert tasks["Trainer"].inputs.parameters["custom_config"].component_input_parameter == "trainer_custom_config"
    # The curated schema is read from the image, where the Dockerfile copies components/.
    schema_file = tasks["SchemaGen"].inputs.parameters["schema_file"].runtime_value.constant.string_value
    assert schema_file == "/app/components/schemas/criteo/schema.pbtxt"
    assert os.path.isfile(os.path.join(REPO_ROOT, os.path.relpath(schema_file, "/app")))
    # The Pusher writes where TF Serving reads, not into the local output folder.
    push = tasks["Pusher"].inputs.parameters["push_destination"].runtime_value.constant.string_value
    assert json.loads(push)["filesystem"]["base_directory"] == SERVING_DIR
    assert tasks["Pusher"].inputs.parameters["model_name"].runtime_value.constant.string_value == "ctr"
    # The pruning Pusher reads eval rows and the Transform graph; the Trainer warm-starts from the
    # last pushed model (LatestPushedModel, no Resolver).
    assert set(tasks["Pusher"].inputs.artifacts) >= {"model", "model_blessing", "examples", "transform_graph"}
    assert tasks["Trainer"].inputs.artifacts["base_model"].task_output_artifact.producer_task == "LatestPushedModel"


# -- submit / schedule against kfp's HTTP boundary -------------------------------------------------

class _Response:
    def __init__(self, status, payload):
        self.status, self.reason = status, "OK" if status == 200 else "Error"
        self.data = json.dumps(payload).encode()

    def getheader(self, name, default=None):
        return "application/json" if name.lower() == "content-type" else default

    def getheaders(self):
        return {"content-type": "application/json"}


@pytest.fixture
def kfp_server(monkeypatch):
    """Records every request kfp sends; answers as a single-user KFP v2 API server with no experiments."""
    import kfp_server_api.rest
    sent = []

    def request(self, method, url, query_params=None, headers=None, body=None, post_params=None,
                _preload_content=True, _request_timeout=None):
        path = re.sub(r"^https?://[^/]+", "", url)
        sent.append({"method": method, "path": path, "query": dict(query_params or []), "body": body,
                     "headers": {k.lower(): v for k, v in (headers or {}).items()}})  # case-insensitive
        routes = {
            ("GET", "/apis/v2beta1/healthz"): {"multi_user": False},
            ("GET", "/apis/v2beta1/experiments"): {"experiments": [], "total_size": 0},
            ("POST", "/apis/v2beta1/experiments"): {"experiment_id": "exp-1", "display_name": "sparsectr"},
            ("POST", "/apis/v2beta1/runs"): {"run_id": "run-1", "display_name": (body or {}).get("display_name")},
            ("POST", "/apis/v2beta1/recurringruns"): {"recurring_run_id": "rr-1",
                                                      "display_name": (body or {}).get("display_name")},
        }
        if (method, path) not in routes:
            return _Response(404, {"error": f"no route {method} {path}", "code": 5})
        return _Response(200, routes[(method, path)])

    monkeypatch.setattr(kfp_server_api.rest.RESTClientObject, "request", request)
    monkeypatch.setenv("HOME", str(os.environ.get("TMPDIR", "/tmp")))
    return sent


def assert_sent_spec_is_the_package(sent_spec, spec):
    """The PipelineSpec in a request is the compiled one, with caching off for every task."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    sent = json_format.ParseDict(sent_spec, pipeline_spec_pb2.PipelineSpec())
    assert all(not t.caching_options.enable_cache for t in sent.root.dag.tasks.values())
    for task in sent.root.dag.tasks.values():
        task.ClearField("caching_options")
    assert sent == spec


def _one(sent, method, path):
    (req,) = [r for r in sent if (r["method"], r["path"]) == (method, path)]
    return req


def test_submit_sends_the_compiled_spec_as_a_run(compiled, kfp_server):
    from pipelines import kubeflow_client
    path, _, spec, _ = compiled
    result = kubeflow_client.submit(path, "http://kfp.example:8888", params={"data_root": "gs://other/clicks"},
                                    run_name="nightly", pipeline_root=PIPELINE_ROOT)
    assert result == {"run_id": "run-1", "run_name": "nightly", "experiment": "sparsectr"}
    assert _one(kfp_server, "POST", "/apis/v2beta1/experiments")["body"]["display_name"] == "sparsectr"
    run = _one(kfp_server, "POST", "/apis/v2beta1/runs")["body"]
    assert run["display_name"] == "nightly"
    assert run["experiment_id"] == "exp-1"
    assert_sent_spec_is_the_package(run["pipeline_spec"], spec)
    assert run["runtime_config"] == {"pipeline_root": PIPELINE_ROOT, "parameters": {"data_root": "gs://other/clicks"}}


def test_schedule_sends_a_recurring_run_with_cron_one_at_a_time_no_catchup(compiled, kfp_server):
    from pipelines import kubeflow_client
    path, _, spec, _ = compiled
    result = kubeflow_client.schedule(path, "http://kfp.example:8888", "0 3 * * *", job_name="daily",
                                      params={"span_window": 2})
    assert result["recurring_run_id"] == "rr-1" and result["cron"] == "0 0 3 * * *"
    job = _one(kfp_server, "POST", "/apis/v2beta1/recurringruns")["body"]
    assert job["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    assert int(job["max_concurrency"]) == 1
    assert job["no_catchup"] is True
    assert job["mode"] == "ENABLE"
    assert job["display_name"] == "daily" and job["experiment_id"] == "exp-1"
    assert_sent_spec_is_the_package(job["pipeline_spec"], spec)
    assert job["runtime_config"]["parameters"] == {"span_window": 2}
    assert "pipeline_version_reference" not in job


def test_cli_submit_with_trainer_override(compiled, kfp_server, capsys):
    from pipelines import cli
    path, _, spec, _ = compiled
    assert cli.main(["submit", "--package", path, "--endpoint", "http://kfp.example", "--run-name", "r",
                     "--trainer-arg", "epochs=8", "--param", "span_window=5"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"] == "run-1"
    params = _one(kfp_server, "POST", "/apis/v2beta1/runs")["body"]["runtime_config"]["parameters"]
    assert params["span_window"] == 5
    custom = json.loads(params["trainer_custom_config"])
    default = json.loads(spec.root.input_definitions.parameters["trainer_custom_config"].default_value.string_value)
    assert custom["dataset_spec"] == default["dataset_spec"]
    assert json.loads(custom["trainer"]) == dict(json.loads(default["trainer"]), epochs=8)


@pytest.mark.parametrize("cron, expected", [
    ("0 3 * * *", "0 0 3 * * *"), ("30 0 3 * * MON-FRI", "30 0 3 * * MON-FRI"), ("*/15 * * * *", "0 */15 * * * *"),
    ("0 0 1,15 * ?", "0 0 0 1,15 * ?")])
def test_cron_expressions(cron, expected):
    from pipelines.kubeflow_client import normalize_cron
    assert normalize_cron(cron) == expected


# -- CLI errors: one line, exit 2, no traceback ----------------------------------------------------

def run_cli(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_USE_LEGACY_KERAS="1")
    return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(code, err, must_contain):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: ") and must_contain in lines[0], lines[0]


@pytest.mark.parametrize("args, message", [
    (["schedule", "--cron", "0 25 * * *", "--package", "PKG", "--endpoint", "http://kfp"], "not a valid hour"),
    (["schedule", "--cron", "every day", "--package", "PKG", "--endpoint", "http://kfp"], "expected 5 fields"),
    (["submit", "--package", "MISSING", "--endpoint", "http://kfp"], "no such file"),
    (["submit", "--package", "PKG", "--endpoint", "kfp.example"], "expected http(s)://"),
    (["submit", "--package", "PKG", "--endpoint", "http://kfp", "--param", "epochs=3"], "not a runtime parameter"),
    (["submit", "--package", "PKG", "--endpoint", "http://kfp", "--trainer-arg", "epoch=3"], "--trainer-arg"),
    (["submit", "--package", "PKG", "--endpoint", "http://kfp", "--trainer-arg", "l21=-1"], "trainer.l21"),
    (["submit", "--package", "NOT_A_SPEC", "--endpoint", "http://kfp"], "not a KFP PipelineSpec"),
    (["submit", "--endpoint", "http://kfp"], "--package FILE"),
    (["compile", "--config", "MISSING"], "no such file"),
    (["compile", "--output", "pipeline.json", "--data", "gs://b/c", "--serving-dir", "gs://b/m"], "must end with .yaml"),
    (["compile"], "data.data_root is not set"),
    (["compile", "--data", "gs://b/c"], "serving.serving_dir is not set"),
    (["compile", "--data", "gs://b/c", "--serving-dir", "/models"],
     "serving.serving_dir /models is a local path that no Kubeflow step mounts: set kubeflow.serving_volume_claim"),
    (["submit", "--package", "PKG", "--endpoint", "http://kfp", "--token-file", "MISSING"], "cannot read the KFP token"),
])
def test_bad_arguments_are_one_line_errors(compiled, kfp_server, tmp_path, capsys, args, message):
    from pipelines import cli
    not_a_spec = tmp_path / "not_a_spec.yaml"
    not_a_spec.write_text("components: 3\n")
    subst = {"PKG": compiled[0], "MISSING": str(tmp_path / "missing.yaml"), "NOT_A_SPEC": str(not_a_spec)}
    code = cli.main([subst.get(a, a) for a in args])
    assert_one_line_error(code, capsys.readouterr().err, message)
    assert not any(r["method"] == "POST" for r in kfp_server)  # nothing was created


def test_unreachable_endpoint_is_one_line_error(compiled):
    proc = run_cli("submit", "--package", compiled[0], "--endpoint", "http://127.0.0.1:9")
    assert_one_line_error(proc.returncode, proc.stderr, "cannot reach Kubeflow Pipelines at http://127.0.0.1:9")
    assert "Connection refused" in proc.stderr


def test_help_output(capsys):
    from pipelines import cli
    for command, options in [("compile", ["--output", "--config", "--data", "--image", "--beam-preset"]),
                             ("submit", ["--package", "--endpoint", "--param", "--trainer-arg"]),
                             ("schedule", ["--cron", "--package", "--endpoint", "--job-name"])]:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        for option in options:
            assert option in out, (command, option)


# -- the k8s CronJob's command line and the pipeline image -----------------------------------------

def test_cronjob_command_line_parses():
    """k8s/base's CronJob runs `python -m pipelines submit --config ... --endpoint $(KFP_ENDPOINT)`."""
    import argparse
    from pipelines import kubeflow_client, kubeflow_compile, kubeflow_runner
    with open(os.path.join(REPO_ROOT, "k8s", "base", "pipeline-cronjob.yaml")) as f:
        container = yaml.safe_load(f)["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "pipelines", "submit"]
    parser = argparse.ArgumentParser()
    kubeflow_runner.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["submit"] + container["args"])
    assert args.config == "/etc/sparsectr/pipeline.yaml" and args.endpoint == "$(KFP_ENDPOINT)"
    # The run goes to the pod's own namespace, authenticated with the projected KFP token.
    assert args.namespace == "$(POD_NAMESPACE)"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert args.token_file == kubeflow_client.DEFAULT_TOKEN_PATH
    # The mounted config compiles for Kubeflow: it names a data root and a serving folder.
    config = kubeflow_runner.kubeflow_config(argparse.Namespace(
        config=os.path.join(REPO_ROOT, "k8s", "base", "config", "pipeline.yaml")))
    kubeflow_compile.check_kubeflow_config(config)
    assert "{SPAN}" in config.data.input_pattern


def dockerfile_instructions():
    with open(os.path.join(REPO_ROOT, "Dockerfile")) as f:
        text = f.read().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), " ".join(rest.split())))
    return out


def test_dockerfile_builds_the_pipeline_image():
    instructions = dockerfile_instructions()
    args = dict(rest.split("=", 1) for kw, rest in instructions if kw == "ARG" and "=" in rest)
    froms = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest) for kw, rest in instructions if kw == "FROM"]
    assert froms and (froms[-1].startswith("python:3.10") or froms[-1].startswith("gcr.io/tfx-oss-public/tfx:1.16.0"))
    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    # Every install checks the lock's hashes (pip itself included) and resolves nothing.
    installs = re.findall(r"pip install [^&;]*", runs)
    assert installs and all("--require-hashes" in i and "--no-deps" in i for i in installs), installs
    assert any(re.search(r"-r /tmp/image\.lock", i) for i in installs), installs
    env = " ".join(rest for kw, rest in instructions if kw == "ENV")
    assert "TF_USE_LEGACY_KERAS=1" in env and "PYTHONPATH=/app" in env
    copies = [rest.split() for kw, rest in instructions if kw == "COPY"]
    copied = {os.path.normpath(src) for args in copies for src in args[:-1] if not src.startswith("--")}
    dest = {os.path.normpath(args[-1]) for args in copies}
    assert {"components", "pipelines", "optim", "serving", "requirements.lock"} <= copied
    assert all(d.startswith("/app") or d.startswith("/tmp") for d in dest), dest
    for package in ("components", "pipelines", "optim", "serving"):
        assert os.path.isfile(os.path.join(REPO_ROOT, package, "__init__.py"))
    # The steps' entrypoint is given by the compiled spec; the image must not force another one.
    assert not any(kw == "ENTRYPOINT" for kw, _ in instructions)
    with open(os.path.join(REPO_ROOT, ".dockerignore")) as f:
        ignored = {line.strip().rstrip("/") for line in f if line.strip() and not line.startswith("#")}
    assert {".venv", "output", ".git"} <= {i.lstrip("/") for i in ignored}


def test_cronjob_submit_compiles_the_mounted_config_and_submits(kfp_server, capsys, tmp_path):
    """What the CronJob runs: `submit --config <k8s/base/config/pipeline.yaml> --endpoint URL --namespace NS
    --token-file TOKEN`: the PVC is mounted in the steps that touch the serving folder, every request
    carries the ServiceAccount token."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    from pipelines import cli
    from pipelines.config import load_config
    path = os.path.join(REPO_ROOT, "k8s", "base", "config", "pipeline.yaml")
    config = load_config(path)
    token = tmp_path / "token"
    token.write_text("sa-token-1\n")
    assert cli.main(["submit", "--config", path, "--endpoint", "http://kfp.example", "--namespace", "sparsectr",
                     "--token-file", str(token)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["run_id"] == "run-1"
    assert "warning" not in captured.err  # the serving folder is mounted, the data root is a bucket
    run = _one(kfp_server, "POST", "/apis/v2beta1/runs")["body"]
    assert run["runtime_config"]["pipeline_root"] == config.kubeflow.pipeline_root
    assert _one(kfp_server, "POST", "/apis/v2beta1/experiments")["body"]["namespace"] == "sparsectr"
    # The spec and its platform spec, as kfp sends a file with two documents.
    assert set(run["pipeline_spec"]) == {"pipeline_spec", "platform_spec"}
    sent = json_format.ParseDict(run["pipeline_spec"]["pipeline_spec"], pipeline_spec_pb2.PipelineSpec())
    assert sent.root.input_definitions.parameters["data_root"].default_value.string_value == config.data.data_root
    assert {e["container"]["image"] for e in json_format.MessageToDict(sent.deployment_spec)["executors"].values()} \
        == {config.kubeflow.image}
    mounts = volume_mounts(run["pipeline_spec"]["platform_spec"])
    assert mounts == {"Pusher_executor": [(CLAIM, "/models")], "LatestPushedModel_executor": [(CLAIM, "/models")]}
    # Every API call (healthz, experiments, runs) carried the projected token as a bearer token.
    assert kfp_server and all(r["headers"].get("authorization") == "Bearer sa-token-1" for r in kfp_server), \
        [(r["method"], r["path"], r["headers"]) for r in kfp_server]


def volume_mounts(platform_spec):
    """{executor label: [(claim, mount path)]} of a PlatformSpec dict, read with kfp-kubernetes' proto."""
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s
    from kfp.pipeline_spec import pipeline_spec_pb2
    spec = json_format.ParseDict(platform_spec, pipeline_spec_pb2.PlatformSpec())
    out = {}
    for label, struct in spec.platforms["kubernetes"].deployment_spec.executors.items():
        config = json_format.ParseDict(json_format.MessageToDict(struct), k8s.KubernetesExecutorConfig())
        out[label] = [(m.constant, m.mount_path) for m in config.pvc_mount]
    return out


def test_credentials_are_the_token_file_read_before_every_request(compiled, kfp_server, tmp_path, monkeypatch):
    """kfp's ServiceAccountTokenVolumeCredentials: the kubelet rotates the projected token, each call reads it."""
    from pipelines import kubeflow_client
    token = tmp_path / "token"
    token.write_text("first")
    kubeflow_client.submit(compiled[0], "http://kfp.example:8888", run_name="a", token_file=str(token))
    token.write_text("second")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))  # the env var kfp documents, no option
    kubeflow_client.schedule(compiled[0], "http://kfp.example:8888", "0 3 * * *", job_name="b")
    runs = [r for r in kfp_server if r["path"] == "/apis/v2beta1/runs"]
    recurring = [r for r in kfp_server if r["path"] == "/apis/v2beta1/recurringruns"]
    assert runs[0]["headers"]["authorization"] == "Bearer first"
    assert recurring[0]["headers"]["authorization"] == "Bearer second"


def test_without_a_token_no_credentials_are_sent(compiled, kfp_server, monkeypatch):
    from pipelines import kubeflow_client
    monkeypatch.delenv("KF_PIPELINES_SA_TOKEN_PATH", raising=False)
    monkeypatch.setattr(kubeflow_client, "DEFAULT_TOKEN_PATH", "/nonexistent/token")
    kubeflow_client.submit(compiled[0], "http://kfp.example:8888", run_name="a")
    assert not any("authorization" in r["headers"] for r in kfp_server)


def test_serving_volume_claim_and_serving_dir_must_agree():
    from pipelines import kubeflow_compile
    from pipelines.config import load_config
    base = {"data": {"data_root": DATA_ROOT}, "kubeflow": {"image": IMAGE, "pipeline_root": PIPELINE_ROOT}}
    with pytest.raises(ValueError, match="is a local path that no Kubeflow step mounts"):
        kubeflow_compile.check_kubeflow_config(load_config(None, dict(base, serving={"serving_dir": "/models"})))
    with pytest.raises(ValueError, match="is set but serving.serving_dir gs://b/m is an object-store URI"):
        kubeflow_compile.check_kubeflow_config(load_config(None, dict(
            base, serving={"serving_dir": "gs://b/m"}, kubeflow=dict(base["kubeflow"], serving_volume_claim=CLAIM))))
    with pytest.raises(ValueError, match="must be an absolute folder"):
        kubeflow_compile.check_kubeflow_config(load_config(None, dict(
            base, serving={"serving_dir": "models"}, kubeflow=dict(base["kubeflow"], serving_volume_claim=CLAIM))))
    from pipelines.config import ConfigError
    with pytest.raises(ConfigError, match="kubeflow.serving_volume_claim: must be a Kubernetes object name"):
        load_config(None, {"kubeflow": {"serving_volume_claim": "Models_PVC"}})


def test_compiled_package_mounts_the_claim_in_the_pusher_and_latest_pushed_model(tmp_path):
    """kfp's own reader of the file finds the PlatformSpec; the mounts are where the two steps read and write."""
    import json as _json

    from kfp.client import client as kfp_client
    from pipelines import kubeflow_compile
    from pipelines.config import load_config
    config = load_config(os.path.join(REPO_ROOT, "k8s", "base", "config", "pipeline.yaml"))
    path = kubeflow_compile.compile_pipeline(config, str(tmp_path / "p.yaml"))
    doc = kfp_client._extract_pipeline_yaml(path)
    from google.protobuf import json_format
    mounts = volume_mounts(json_format.MessageToDict(doc.platform_spec))
    assert mounts == {"Pusher_executor": [(CLAIM, "/models")], "LatestPushedModel_executor": [(CLAIM, "/models")]}
    tasks = doc.pipeline_spec.root.dag.tasks
    push = _json.loads(tasks["Pusher"].inputs.parameters["push_destination"].runtime_value.constant.string_value)
    assert push["filesystem"]["base_directory"] == "/models"
    assert tasks["LatestPushedModel"].inputs.parameters["model_base"].runtime_value.constant.string_value \
        == "/models/ctr"
    # The ServingCheck needs no volume: the candidate travels as its blessing artifact.
    assert "ServingCheck_executor" not in mounts


# -- the lock and the image's packages -------------------------------------------------------------

def image_excluded_packages():
    """The distributions the Dockerfile leaves out of the image (its grep -v of the lock)."""
    runs = " ".join(rest for kw, rest in dockerfile_instructions() if kw == "RUN")
    match = re.search(r"grep -v -i -E '\^\(([^)]*)\)=='", runs)
    assert match, "no exclusion of the lock in the Dockerfile"
    return match.group(1).split("|")


def test_lock_pins_every_package_with_a_hash_and_installs_require_them():
    from scripts.lock_hashes import read_lock
    header, pins = read_lock(os.path.join(REPO_ROOT, "requirements.lock"))
    assert len(pins) > 200 and all(hashes for _, _, hashes in pins), [n for n, _, h in pins if not h]
    assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for _, _, hashes in pins for h in hashes)
    names = [n.lower() for n, _, _ in pins]
    assert len(names) == len(set(names)) and "kfp-kubernetes" in names
    with open(os.path.join(REPO_ROOT, "scripts", "setup_env.sh")) as f:
        setup = f.read()
    installs = re.findall(r'pip install [^\n]*', setup)
    assert installs and all("--require-hashes" in i for i in installs), installs
    # The installed environment is the lock (same versions), so the hashes describe what runs here.
    from importlib import metadata
    for name, version, _ in pins:
        assert metadata.version(name) == version, name


def test_image_has_no_notebook_servers_and_the_steps_do_not_need_them(tmp_path):
    from scripts.lock_hashes import read_lock
    excluded = image_excluded_packages()
    _, pins = read_lock(os.path.join(REPO_ROOT, "requirements.lock"))
    pinned = {n.lower() for n, _, _ in pins}
    assert {e.lower() for e in excluded} <= pinned  # no stale names
    # Every notebook / Jupyter server of the lock is left out.
    servers = {n for n in pinned if re.match(r"(notebook|jupyter.*server|jupyterlab|terminado|jupyter-lsp)", n)}
    assert servers and servers <= {e.lower() for e in excluded}, servers - {e.lower() for e in excluded}
    # What the steps and the CronJob import (every executor of the pipeline, the KFP entrypoint, kfp and
    # the serving process) imports without the left-out distributions (their modules cannot be imported
    # here, as in the image: an optional import of one, e.g. kubernetes' of kubernetes-validate, is
    # skipped) and loads none of them.
    code = """
import sys, json
from importlib import metadata
import importlib.abc
left_out = set()
for name in json.loads(sys.argv[1]):
    dist = metadata.distribution(name)
    left_out.update((dist.read_text("top_level.txt") or "").split())
    left_out.update(f.parts[0].split(".")[0] for f in (dist.files or []) if f.suffix == ".py")
left_out.discard("__pycache__")
left_out.discard("")

class LeftOut(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in left_out:
            raise ModuleNotFoundError(f"No module named {fullname!r} (left out of the image)", name=fullname)
        return None

sys.meta_path.insert(0, LeftOut())
import pipelines.pipeline, pipelines.kubeflow_runner, pipelines.cli, serving.local_server, serving.grpc_client
import components.trainer_module, components.preprocessing, components.gates, components.validation_gate
import components.pruned_pusher.executor, components.serving_check.executor
import components.click_log_example_gen.executor
import tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor
import tfx.orchestration.kubeflow.v2.file_based_example_gen.driver
from tfx.components.evaluator import executor as _e
from tfx.components.transform import executor as _t
from tfx.components.statistics_gen import executor as _s
from tfx.components.example_validator import executor as _v
from tfx.components.trainer import executor as _tr
from tfx.components.schema_gen.import_schema_gen import executor as _i
import kfp, kfp.kubernetes
print(json.dumps(sorted(top for top in left_out if top in sys.modules)))
"""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(excluded)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
