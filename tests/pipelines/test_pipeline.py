"""pipelines/pipeline.py without running it (the runs: test_local_pipeline.py)."""
import tensorflow as tf

from components.dataset_spec import load_spec
from pipelines.config import PipelineConfig
from pipelines.pipeline import eval_config


def test_the_evaluator_never_loads_a_model_as_keras_to_find_its_type(monkeypatch):
    from tensorflow_model_analysis.utils import model_util
    tried = []

    def load_model(path, *args, **kwargs):
        tried.append(path)
        raise OSError("not a Keras model")

    monkeypatch.setattr(tf.keras.models, "load_model", load_model)
    (spec,) = eval_config(PipelineConfig(), load_spec("criteo")).model_specs
    assert model_util.get_model_type(spec, "/models/candidate", None) == "tf_generic"
    assert tried == []


def test_every_beam_step_skips_tfxs_sdist_on_a_direct_runner(tmp_path):
    """Local runs and Kubeflow pods construct the executor classes named here: each must skip the sdist."""
    from tfx.dsl.components.base import base_beam_executor

    from components.beam_dependencies import NoSdistOnDirectRunner
    from pipelines.config import load_config
    from pipelines.pipeline import create_pipeline
    components = create_pipeline(load_config(None, {"output_dir": str(tmp_path)}), str(tmp_path)).components
    beam_steps = {c.id: c.executor_spec.executor_class for c in components
                  if issubclass(getattr(c.executor_spec, "executor_class", object), base_beam_executor.BaseBeamExecutor)}
    assert sorted(beam_steps) == ["ClickLogExampleGen", "Evaluator", "StatisticsGen", "Transform"]
    assert all(issubclass(cls, NoSdistOnDirectRunner) for cls in beam_steps.values()), beam_steps


def test_without_materializing_the_trainer_reads_examplegens_examples_with_the_transform_graph(tmp_path):
    from pipelines.config import load_config
    from pipelines.pipeline import create_pipeline

    def nodes(materialize):
        config = load_config(None, {"output_dir": str(tmp_path), "data": {"materialize_transformed": materialize}})
        return {c.id: c for c in create_pipeline(config, str(tmp_path)).components}

    for materialize, source in ((True, ("Transform", "transformed_examples")),
                                (False, ("ClickLogExampleGen", "examples"))):
        components = nodes(materialize)
        examples = components["Trainer"].inputs["examples"]
        assert (examples.producer_component_id, examples.output_key) == source
        assert ("transformed_examples" in components["Transform"].outputs) is materialize
        assert components["Trainer"].inputs["transform_graph"].producer_component_id == "Transform"


# Builds the local pipeline, compiles the Kubeflow one and loads the report step in a fresh process,
# then names the modules of tfx.v1's extensions it imported.
_BUILD_AND_COMPILE = """
import json, sys
from pipelines import kubeflow_compile, local_runner, report_step
from pipelines.config import load_config
from pipelines.pipeline import create_pipeline
from tests.pipelines.test_kubeflow import kubeflow_config
out = sys.argv[1]
create_pipeline(load_config(None, {"output_dir": out}), out)
kubeflow_compile.compile_pipeline(kubeflow_config(), out + "/pipeline.yaml")
print(json.dumps([m for m in ("tfx.v1", "google.cloud.aiplatform") if m in sys.modules]))
"""


def test_building_and_compiling_the_pipeline_leaves_tfx_v1_and_its_cloud_extensions_unimported(tmp_path):
    # `from tfx import v1` imports Google Cloud AI Platform too: 3 s more start-up for every run.
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", _BUILD_AND_COMPILE, str(tmp_path)], cwd=root,
                          env=dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="2"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    assert os.path.getsize(tmp_path / "pipeline.yaml") > 0
