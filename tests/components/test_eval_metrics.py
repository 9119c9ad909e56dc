"""components.eval_metrics: BinaryLogLoss gives tf_keras BinaryCrossentropy's value, fast path or not."""
import numpy as np
import pytest
import tensorflow_model_analysis as tfma
import tf_keras as keras
from tensorflow_model_analysis.metrics import metric_specs, metric_types, metric_util

from components import eval_metrics
from components.eval_metrics import BinaryLogLoss, binary_log_loss


def keras_log_loss(labels, probabilities, weights=None) -> float:
    metric = keras.metrics.BinaryCrossentropy()
    metric.update_state(np.asarray(labels, np.float32)[:, None], np.asarray(probabilities, np.float32)[:, None],
                        sample_weight=None if weights is None else np.asarray(weights, np.float32))
    return float(metric.result())


def sample(n=5000, seed=0):
    rng = np.random.default_rng(seed)
    probabilities = rng.uniform(0, 1, n)
    probabilities[:3] = [0.0, 1.0, 1e-9]  # clipped as tf_keras clips
    labels = (rng.uniform(0, 1, n) < probabilities).astype(np.int64)
    labels[:3] = [1, 0, 1]
    return labels, probabilities


def combine(combiner, elements, chunks=3):
    """Beam's contract: inputs added to several accumulators, compacted, merged, extracted."""
    accumulators = []
    for part in np.array_split(np.arange(len(elements)), chunks):
        accumulator = combiner.create_accumulator()
        for i in part:
            accumulator = combiner.add_input(accumulator, elements[i])
        accumulators.append(combiner.compact(accumulator))
    return combiner.extract_output(combiner.merge_accumulators(accumulators))


def computation(eval_config=None, model_name="", example_weighted=False):
    (computation,) = BinaryLogLoss().computations(eval_config=eval_config, model_names=[model_name],
                                                  output_names=[""], example_weighted=example_weighted)
    return computation


def test_elementwise_loss_is_tf_keras_binary_crossentropy():
    labels, probabilities = sample()
    assert binary_log_loss(labels, probabilities).mean() == pytest.approx(keras_log_loss(labels, probabilities),
                                                                          rel=1e-6)
    assert np.isfinite(binary_log_loss([1, 0], [0.0, 1.0])).all()


def test_single_model_examples_take_the_fast_path_and_give_keras_value(monkeypatch):
    labels, probabilities = sample()
    elements = [metric_types.StandardMetricInputs(label=np.array([y]), prediction=np.array([p], np.float32),
                                                  example_weight=np.array([1.0]))
                for y, p in zip(labels, probabilities)]

    def no_conversion(*args, **kwargs):
        raise AssertionError("the fast path converted an example")
    monkeypatch.setattr(eval_metrics.metric_util, "to_label_prediction_example_weight", no_conversion)
    comp = computation()
    (key,) = comp.keys
    assert key.name == "binary_crossentropy"
    value = combine(comp.combiner, elements)[key]
    assert value == pytest.approx(keras_log_loss(labels, probabilities.astype(np.float32)), rel=1e-6)


def test_candidate_and_baseline_predictions_are_picked_by_model_name():
    labels, probabilities = sample(2000)
    other = np.clip(probabilities[::-1] * 0.5 + 0.2, 0, 1)
    elements = [metric_types.StandardMetricInputs(label={"candidate": np.array([y]), "baseline": np.array([y])},
                                                  prediction={"candidate": np.array([p]), "baseline": np.array([q])},
                                                  example_weight={"candidate": np.array([1.0]),
                                                                  "baseline": np.array([1.0])})
                for y, p, q in zip(labels, probabilities, other)]
    config = tfma.EvalConfig(model_specs=[tfma.ModelSpec(name="candidate"), tfma.ModelSpec(name="baseline")])
    for name, values in (("candidate", probabilities), ("baseline", other)):
        comp = computation(config, model_name=name)
        assert combine(comp.combiner, elements)[comp.keys[0]] == pytest.approx(keras_log_loss(labels, values), rel=1e-6)


def test_weighted_examples_go_through_tfma_conversion_with_the_same_value(monkeypatch):
    labels, probabilities = sample(1000)
    weights = np.random.default_rng(1).uniform(0.5, 2.0, len(labels))
    elements = [metric_types.StandardMetricInputs(label=np.array([y]), prediction=np.array([p]),
                                                  example_weight=np.array([w]))
                for y, p, w in zip(labels, probabilities, weights)]
    calls = []
    real = metric_util.to_label_prediction_example_weight

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(eval_metrics.metric_util, "to_label_prediction_example_weight", counted)
    comp = computation(example_weighted=True)
    value = combine(comp.combiner, elements)[comp.keys[0]]
    assert len(calls) == len(elements)
    assert value == pytest.approx(keras_log_loss(labels, probabilities, weights), rel=1e-6)


def test_no_examples_give_nan():
    comp = computation()
    assert np.isnan(comp.combiner.extract_output(comp.combiner.create_accumulator())[comp.keys[0]])


def test_pipeline_eval_config_computes_log_loss_with_binary_log_loss():
    from components.dataset_spec import load_spec
    from pipelines.config import PipelineConfig
    from pipelines.pipeline import eval_config
    config = eval_config(PipelineConfig(), load_spec("criteo"))
    names = [m.class_name for m in config.metrics_specs[0].metrics]
    assert "BinaryCrossentropy" not in names and "BinaryCrossEntropy" not in names
    (metric,) = [m for m in config.metrics_specs[0].metrics if m.class_name == "BinaryLogLoss"]
    assert isinstance(metric_specs.metric_instance(metric), BinaryLogLoss)
