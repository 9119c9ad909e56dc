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


def counted_conversions(monkeypatch):
    """A list that gains an entry at each call of TFMA's per-example conversion (which still runs)."""
    calls = []
    real = metric_util.to_label_prediction_example_weight

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(metric_util, "to_label_prediction_example_weight", counted)
    return calls


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
    calls = counted_conversions(monkeypatch)
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


# --- TFMA's AUC and calibration metrics, batched ---------------------------------------------------------

BATCHED = {eval_metrics.BatchedAUC: tfma.metrics.AUC, eval_metrics.BatchedCalibration: tfma.metrics.Calibration,
           eval_metrics.BatchedMeanLabel: tfma.metrics.MeanLabel,
           eval_metrics.BatchedMeanPrediction: tfma.metrics.MeanPrediction}


def combiner_computations(metric, eval_config=None, model_name="", example_weighted=False):
    return [c for c in metric.computations(eval_config=eval_config, model_names=[model_name], output_names=[""],
                                           example_weighted=example_weighted)
            if isinstance(c, metric_types.MetricComputation)]


def edge_predictions(n=6000, seed=2):
    """Predictions on and around the histogram's bucket edges, outside [0, 1], and 0/1 labels."""
    rng = np.random.default_rng(seed)
    predictions = rng.uniform(0, 1, n)
    predictions[:8] = [0.0, 1.0, 1e-4, 0.5, 0.99995, -0.25, 1.5, 0.123456789]
    labels = (rng.uniform(0, 1, n) < predictions).astype(np.int64)
    return labels, predictions.astype(np.float32)


def assert_same_output(ours, theirs):
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        mine = ours[key]
        if isinstance(value, list):  # a calibration histogram
            assert [b.bucket_id for b in mine] == [b.bucket_id for b in value]
            for a, b in zip(mine, value):
                assert (a.weighted_labels, a.weighted_examples) == (b.weighted_labels, b.weighted_examples)
                assert a.weighted_predictions == pytest.approx(b.weighted_predictions, rel=1e-12, abs=1e-12)
        else:  # weighted labels, predictions and examples
            assert (mine.total_weighted_labels, mine.total_weighted_examples) == (
                value.total_weighted_labels, value.total_weighted_examples)
            assert mine.total_weighted_predictions == pytest.approx(value.total_weighted_predictions, rel=1e-12)


@pytest.mark.parametrize("batched", list(BATCHED))
def test_batched_metrics_have_tfma_names_keys_and_combiner_outputs_without_conversion(batched, monkeypatch):
    labels, predictions = edge_predictions()
    elements = [metric_types.StandardMetricInputs(label=np.array([y]), prediction=np.array([p]),
                                                  example_weight=np.array([1.0]))
                for y, p in zip(labels, predictions)]
    theirs = combiner_computations(BATCHED[batched]())
    expected = [combine(c.combiner, elements) for c in theirs]

    def no_conversion(*args, **kwargs):
        raise AssertionError("the batched path converted an example")
    monkeypatch.setattr(metric_util, "to_label_prediction_example_weight", no_conversion)
    ours = combiner_computations(batched())
    assert [c.keys for c in ours] == [c.keys for c in theirs]
    assert [c == t for c, t in zip(ours, theirs)] == [True] * len(theirs)  # TFMA runs one of the two
    assert {k.name for c in batched().computations(model_names=[""], output_names=[""]) for k in c.keys} == {
        k.name for c in BATCHED[batched]().computations(model_names=[""], output_names=[""]) for k in c.keys}
    for computation, want in zip(ours, expected):
        assert_same_output(combine(computation.combiner, elements, chunks=4), want)


def test_batched_metrics_pick_candidate_and_baseline_by_model_name():
    labels, predictions = edge_predictions(3000)
    other = np.clip(predictions[::-1] * 0.5 + 0.2, 0, 1)
    elements = [metric_types.StandardMetricInputs(label=np.array([y]),
                                                  prediction={"candidate": np.array([p]), "baseline": np.array([q])},
                                                  example_weight=np.array([1.0]))
                for y, p, q in zip(labels, predictions, other)]
    config = tfma.EvalConfig(model_specs=[tfma.ModelSpec(name="candidate"), tfma.ModelSpec(name="baseline")])
    for batched, tfma_metric in BATCHED.items():
        for name in ("candidate", "baseline"):
            for ours, theirs in zip(combiner_computations(batched(), config, name),
                                    combiner_computations(tfma_metric(), config, name)):
                assert_same_output(combine(ours.combiner, elements), combine(theirs.combiner, elements))


def test_other_examples_go_to_tfma_combiner_with_the_same_output(monkeypatch):
    """Weighted examples, fractional labels (histogram) and a NaN prediction are TFMA's to handle."""
    labels, predictions = edge_predictions(1500)
    weights = np.random.default_rng(3).uniform(0.5, 2.0, len(labels))
    fractional = [metric_types.StandardMetricInputs(label=np.array([0.3 if i % 7 == 0 else y]),
                                                    prediction=np.array([p]), example_weight=np.array([1.0]))
                  for i, (y, p) in enumerate(zip(labels, predictions))]
    weighted = [metric_types.StandardMetricInputs(label=np.array([y]), prediction=np.array([p]),
                                                  example_weight=np.array([w]))
                for y, p, w in zip(labels, predictions, weights)]
    calls = counted_conversions(monkeypatch)
    for batched, tfma_metric in BATCHED.items():
        for ours, theirs in zip(combiner_computations(batched(), example_weighted=True),
                                combiner_computations(tfma_metric(), example_weighted=True)):
            calls.clear()
            assert_same_output(combine(ours.combiner, weighted), combine(theirs.combiner, weighted))
            assert len(calls) == 2 * len(weighted)
    (histogram,) = combiner_computations(eval_metrics.BatchedAUC())
    (tfma_histogram,) = combiner_computations(tfma.metrics.AUC())
    calls.clear()
    assert_same_output(combine(histogram.combiner, fractional), combine(tfma_histogram.combiner, fractional))
    assert len(calls) == len(fractional) + (len(fractional) + 6) // 7
    nan = fractional[:5] + [metric_types.StandardMetricInputs(label=np.array([1]), prediction=np.array([np.nan]),
                                                              example_weight=np.array([1.0]))]
    for combiner in (histogram.combiner, tfma_histogram.combiner):
        with pytest.raises(ValueError):  # TFMA's own error: a NaN has no bucket
            combine(combiner, nan, chunks=1)


def test_pipeline_eval_config_uses_the_batched_metrics_under_tfma_names():
    from components.dataset_spec import load_spec
    from pipelines.config import PipelineConfig
    from pipelines.pipeline import eval_config
    config = eval_config(PipelineConfig(), load_spec("criteo"))
    instances = [metric_specs.metric_instance(m) for m in config.metrics_specs[0].metrics]
    for batched in BATCHED:
        (metric,) = [m for m in instances if type(m) is batched]
        assert metric.name == BATCHED[batched]().name
    (auc,) = [m for m in config.metrics_specs[0].metrics if m.class_name == "BatchedAUC"]
    assert auc.threshold.value_threshold.lower_bound.value == PipelineConfig().gates.min_auc
