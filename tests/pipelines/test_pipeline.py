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
