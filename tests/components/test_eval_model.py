"""components.eval_model: the Evaluator's models, their one-input signatures callable by position
without TF's failed by-name attempt (which formats the whole batch into a TypeError)."""
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.eager.polymorphic_function import concrete_function

from components import eval_model


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A SavedModel with a one-input signature over serialized examples and a two-input one."""
    module = tf.Module()
    module.weight = tf.Variable(2.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def score(examples):
        x = tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([], tf.float32)})["x"]
        return {"score": x * module.weight}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.float32)])
    def add(a, b):
        return {"sum": a + b}

    path = str(tmp_path_factory.mktemp("model"))
    tf.saved_model.save(module, path, signatures={"serving_default": score, "add": add})
    return path


def examples(values):
    return tf.constant([tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=[v]))})).SerializeToString() for v in values])


@pytest.fixture
def no_flat_binding(monkeypatch):
    """TF's fallback after a failed by-name call (a positional call of a restored signature) raises."""
    def refuse(self, args, kwargs):
        raise AssertionError("fell back to the flat signature")
    monkeypatch.setattr(concrete_function.ConcreteFunction, "_call_with_flat_signature", refuse)


def test_a_positional_call_binds_by_name_without_tfs_failed_first_attempt(saved_model, no_flat_binding):
    loaded = tf.saved_model.load(saved_model)
    batch = examples([1.0, 2.5])
    with pytest.raises(AssertionError, match="flat signature"):
        loaded.signatures["serving_default"](batch)  # what TFMA does: TF's detour
    wrapped = eval_model.with_inputs_by_name(loaded)
    np.testing.assert_array_equal(wrapped.signatures["serving_default"](batch)["score"], [2.0, 5.0])
    np.testing.assert_array_equal(wrapped.signatures["serving_default"](examples=batch)["score"], [2.0, 5.0])


def test_only_one_input_signatures_are_wrapped_and_the_rest_of_the_signature_is_its_own(saved_model):
    wrapped = eval_model.with_inputs_by_name(tf.saved_model.load(saved_model))
    serving = wrapped.signatures["serving_default"]
    assert isinstance(serving, eval_model.InputByName) and serving.input_name == "examples"
    assert list(serving.structured_input_signature[1]) == ["examples"]
    assert set(serving.structured_outputs) == {"score"}
    assert not isinstance(wrapped.signatures["add"], eval_model.InputByName)
    np.testing.assert_array_equal(wrapped.signatures["add"](a=tf.constant([1.0]), b=tf.constant([2.0]))["sum"], [3.0])


def test_two_values_for_the_one_input_is_a_type_error(saved_model):
    serving = eval_model.with_inputs_by_name(tf.saved_model.load(saved_model)).signatures["serving_default"]
    batch = examples([1.0])
    with pytest.raises(TypeError, match="one input"):
        serving(batch, batch)
    with pytest.raises(TypeError, match="one input"):
        serving(batch, examples=batch)


def test_tfma_finds_and_calls_the_wrapped_signature_of_the_shared_model(saved_model, no_flat_binding):
    import tensorflow_model_analysis as tfma
    from apache_beam.internal import pickler
    from tensorflow_model_analysis.utils import model_util
    config = tfma.EvalConfig(model_specs=[tfma.ModelSpec(signature_name="serving_default", label_key="y",
                                                         model_type=tfma.TF_GENERIC)])
    shared = eval_model.custom_eval_shared_model(eval_saved_model_path=saved_model, model_name="",
                                                 eval_config=config, add_metrics_callbacks=None)
    # Beam pickles the loader to its workers.
    loader = pickler.loads(pickler.dumps(shared.model_loader))
    model = loader.construct_fn()
    signature = model_util.get_callable(model, "serving_default")
    assert isinstance(signature, eval_model.InputByName)
    assert list(model_util.get_input_specs(model, "serving_default")) == ["examples"]
    np.testing.assert_array_equal(signature(examples([3.0]))["score"], [6.0])


def test_the_pipelines_evaluator_takes_its_shared_model_from_this_module(tmp_path):
    from tfx.components.util import udf_utils
    from pipelines.config import load_config
    from pipelines.pipeline import create_pipeline
    components = create_pipeline(load_config(None, {"output_dir": str(tmp_path)}), str(tmp_path)).components
    (evaluator,) = [c for c in components if c.id == "Evaluator"]
    fn = udf_utils.try_get_fn(evaluator.exec_properties, "custom_eval_shared_model")
    assert fn is not None and fn.__module__ == eval_model.__name__
