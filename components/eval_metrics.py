"""TFMA metrics of the Evaluator's eval_config that TFMA's own would compute too slowly at scale.

`BinaryLogLoss`: tf_keras's BinaryCrossentropy metric (probabilities clipped to [1e-7, 1 - 1e-7],
the mean over examples), named ``binary_crossentropy`` as before. Computed by TFMA, the tf_keras metric
made the Evaluator ~10% slower on one eval file of a 10M-row day (56 vs 51 s,
benchmarks/results/evaluator_metrics_log_loss.txt, from this module's first version); this combiner
was ~1% of a profiled Evaluator run. It reads the label and prediction of an unweighted single-output
model straight from the example, buffers them and sums the loss with NumPy a block at a time; any
other example (weights, several outputs, multi-dimensional labels) goes through TFMA's
`metric_util.to_label_prediction_example_weight`, with the same value.

`BatchedAUC`, `BatchedCalibration`, `BatchedMeanLabel`, `BatchedMeanPrediction`: TFMA's AUC,
Calibration, MeanLabel and MeanPrediction (the same metric names, arguments and values), whose two
per-example combiners (the calibration histogram under AUC, the weighted label/prediction sums under
the other three) took ~40% of a profiled Evaluator run, nearly all in TFMA's per-example conversion.
Here those two combiners are wrapped (`_BufferedCombiner`): an unweighted example with one finite
label and prediction (a 0/1 label for the histogram) is buffered and folded into TFMA's own
accumulator with NumPy a block at a time; any other example goes to TFMA's combiner as it is. The
derived metrics (confusion matrices, AUC, ratios) are TFMA's. Counts and label sums are exact; a sum
of predictions may differ from TFMA's in its last digits (summed in another order, as TFMA's own
merges do). With these metrics the Evaluator ran 1.90x faster than with TFMA's own, 2.77x with a
baseline model (benchmarks/results/evaluator_metrics.txt).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Tuple

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import (calibration, calibration_histogram, confusion_matrix_metrics,
                                               metric_types, metric_util)

BINARY_LOG_LOSS_NAME = "binary_crossentropy"
EPSILON = 1e-7  # tf_keras.backend.epsilon(), as its binary_crossentropy clips with it
FLUSH_EXAMPLES = 4096


def binary_log_loss(labels, probabilities) -> np.ndarray:
    """tf_keras.backend.binary_crossentropy of probabilities, per element: its float32 arithmetic
    (clipping, logs), returned as float64 for summing."""
    eps = np.float32(EPSILON)
    p = np.clip(np.asarray(probabilities, dtype=np.float32), eps, np.float32(1.0) - eps)
    y = np.asarray(labels, dtype=np.float32)
    loss = -(y * np.log(p + eps) + (np.float32(1.0) - y) * np.log(np.float32(1.0) - p + eps))
    return loss.astype(np.float64)


class BinaryLogLoss(metric_types.Metric):
    """Mean binary log loss of probabilities (tf_keras BinaryCrossentropy's value), a few µs an example."""

    def __init__(self, name: str = BINARY_LOG_LOSS_NAME):
        super().__init__(metric_util.merge_per_key_computations(_binary_log_loss_computations), name=name)


def _binary_log_loss_computations(name: Optional[str] = None, eval_config=None, model_name: str = "",
                                  output_name: str = "", example_weighted: bool = False, sub_key=None,
                                  aggregation_type=None, class_weights=None) -> metric_types.MetricComputations:
    key = metric_types.MetricKey(name=name, model_name=model_name, output_name=output_name, sub_key=sub_key,
                                 example_weighted=example_weighted)
    return [metric_types.MetricComputation(
        keys=[key], preprocessors=None,
        combiner=_BinaryLogLossCombiner(key, eval_config, aggregation_type, class_weights))]


def _scalar(value: Any, *keys: str) -> Optional[np.ndarray]:
    """`value` (or its entry under each non-empty key in turn, where it is a dict) when it holds one
    number; None for anything else."""
    for key in keys:
        if isinstance(value, dict) and key:
            value = value.get(key)
    return value if isinstance(value, np.ndarray) and value.size == 1 else None


def _label_and_prediction(element: metric_types.StandardMetricInputs,
                          key: metric_types.MetricKey) -> Optional[Tuple[float, float]]:
    """The label and prediction of `element` for `key` when the combiners may take them as they are (an
    unweighted key without a sub-key, one number each); None for anything TFMA must convert."""
    if key.example_weighted or key.sub_key is not None:
        return None
    label = _scalar(element.label, key.model_name, key.output_name)
    prediction = _scalar(element.prediction, key.model_name, key.output_name)
    if label is None or prediction is None:
        return None
    return float(label.item()), float(prediction.item())


class _Accumulator:
    __slots__ = ("loss", "weight", "labels", "probabilities")

    def __init__(self):
        self.loss, self.weight = 0.0, 0.0
        self.labels: List[float] = []
        self.probabilities: List[float] = []

    def flush(self) -> "_Accumulator":
        if self.labels:
            self.loss += float(binary_log_loss(self.labels, self.probabilities).sum())
            self.weight += len(self.labels)
            self.labels, self.probabilities = [], []
        return self


class _BinaryLogLossCombiner(beam.CombineFn):
    def __init__(self, key: metric_types.MetricKey, eval_config, aggregation_type, class_weights):
        self._key = key
        self._eval_config = eval_config
        self._aggregation_type = aggregation_type
        self._class_weights = class_weights

    def create_accumulator(self) -> _Accumulator:
        return _Accumulator()

    def add_input(self, accumulator: _Accumulator, element: metric_types.StandardMetricInputs) -> _Accumulator:
        key = self._key
        pair = _label_and_prediction(element, key)
        if pair is not None:
            accumulator.labels.append(pair[0])
            accumulator.probabilities.append(pair[1])
            if len(accumulator.labels) >= FLUSH_EXAMPLES:
                accumulator.flush()
            return accumulator
        for label, prediction, weight in metric_util.to_label_prediction_example_weight(
                element, eval_config=self._eval_config, model_name=key.model_name, output_name=key.output_name,
                aggregation_type=self._aggregation_type, class_weights=self._class_weights,
                example_weighted=key.example_weighted, sub_key=key.sub_key, flatten=False):
            weight = metric_util.safe_to_scalar(weight)
            accumulator.loss += float(np.mean(binary_log_loss(label, prediction))) * weight
            accumulator.weight += weight
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[_Accumulator]) -> _Accumulator:
        merged = _Accumulator()
        for accumulator in accumulators:
            accumulator.flush()
            merged.loss += accumulator.loss
            merged.weight += accumulator.weight
        return merged

    def compact(self, accumulator: _Accumulator) -> _Accumulator:
        return accumulator.flush()

    def extract_output(self, accumulator: _Accumulator) -> Dict[metric_types.MetricKey, float]:
        accumulator.flush()
        return {self._key: accumulator.loss / accumulator.weight if accumulator.weight else float("nan")}


# --- TFMA's AUC and calibration metrics with buffered combiners ---------------------------------------

class _Buffered:
    __slots__ = ("inner", "labels", "predictions")

    def __init__(self, inner):
        self.inner = inner
        self.labels: List[float] = []
        self.predictions: List[float] = []


class _BufferedCombiner(beam.CombineFn):
    """TFMA's combiner `inner`, fed the examples it would convert one by one a block at a time.

    `add_input` buffers an unweighted example whose label and prediction are single finite numbers
    (`_takes`); `_fold` adds a block of them to `inner`'s accumulator as `inner.add_input` would one by
    one. Everything else, and the output, is `inner`'s."""

    def __init__(self, inner: beam.CombineFn):
        self._inner = inner
        self._key = inner._key

    def _takes(self, label: float, prediction: float) -> bool:
        return math.isfinite(label) and math.isfinite(prediction)

    def _fold(self, accumulator, labels: np.ndarray, predictions: np.ndarray):
        raise NotImplementedError

    def _flush(self, buffered: _Buffered) -> _Buffered:
        if buffered.labels:
            buffered.inner = self._fold(buffered.inner, np.asarray(buffered.labels, np.float64),
                                        np.asarray(buffered.predictions, np.float64))
            buffered.labels, buffered.predictions = [], []
        return buffered

    def setup(self):
        self._inner.setup()

    def teardown(self):
        self._inner.teardown()

    def create_accumulator(self) -> _Buffered:
        return _Buffered(self._inner.create_accumulator())

    def add_input(self, buffered: _Buffered, element: metric_types.StandardMetricInputs) -> _Buffered:
        pair = _label_and_prediction(element, self._key)
        if pair is not None and self._takes(*pair):
            buffered.labels.append(pair[0])
            buffered.predictions.append(pair[1])
            if len(buffered.labels) >= FLUSH_EXAMPLES:
                self._flush(buffered)
            return buffered
        buffered.inner = self._inner.add_input(buffered.inner, element)
        return buffered

    def merge_accumulators(self, accumulators: Iterable[_Buffered]) -> _Buffered:
        accumulators = [self._flush(a) for a in accumulators]
        return _Buffered(self._inner.merge_accumulators([a.inner for a in accumulators]))

    def compact(self, buffered: _Buffered) -> _Buffered:
        self._flush(buffered)
        buffered.inner = self._inner.compact(buffered.inner)
        return buffered

    def extract_output(self, buffered: _Buffered):
        return self._inner.extract_output(self._flush(buffered).inner)


class _CalibrationHistogramCombiner(_BufferedCombiner):
    """TFMA's calibration histogram (under AUC and every confusion-matrix metric), buffered.

    Named as TFMA's combiner: TFMA runs one computation per (combiner name, keys), so any TFMA metric
    of the same model and output that needs the same histogram shares this one instead of adding
    its own."""

    def __init__(self, inner: beam.CombineFn):
        super().__init__(inner)
        self._buffers = (not inner._class_weights and inner._aggregation_type is None
                         and inner._prediction_based_bucketing)

    def _takes(self, label: float, prediction: float) -> bool:
        # A 0/1 label is one (label, prediction, weight 1) tuple, fractional labels or not.
        return self._buffers and (label == 0.0 or label == 1.0) and math.isfinite(prediction)

    def _fold(self, histogram, labels: np.ndarray, predictions: np.ndarray):
        inner = self._inner
        # inner._bucket_index's arithmetic, element by element: float64, truncated, clamped.
        index = (predictions - inner._left) / inner._range * inner._num_buckets + 1
        index = np.clip(index, 0, inner._num_buckets + 1).astype(np.int64)
        buckets, position = np.unique(index, return_inverse=True)
        label_sums = np.bincount(position, weights=labels).tolist()
        prediction_sums = np.bincount(position, weights=predictions).tolist()
        counts = np.bincount(position).tolist()
        for bucket_id, label_sum, prediction_sum, count in zip(buckets.tolist(), label_sums, prediction_sums,
                                                               counts):
            bucket = histogram.get(bucket_id)
            if bucket is None:
                histogram[bucket_id] = calibration_histogram.Bucket(bucket_id, label_sum, prediction_sum,
                                                                    float(count))
            else:
                bucket.weighted_labels += label_sum
                bucket.weighted_predictions += prediction_sum
                bucket.weighted_examples += float(count)
        return histogram


class _WeightedLabelsPredictionsExamplesCombiner(_BufferedCombiner):
    """TFMA's weighted label, prediction and example sums (under Calibration, MeanLabel,
    MeanPrediction), buffered; named as TFMA's combiner for the reason above."""

    def __init__(self, inner: beam.CombineFn):
        super().__init__(inner)
        self._buffers = not inner._class_weights and inner._aggregation_type is None

    def _takes(self, label: float, prediction: float) -> bool:
        return self._buffers and super()._takes(label, prediction)

    def _fold(self, sums, labels: np.ndarray, predictions: np.ndarray):
        sums.total_weighted_examples += float(len(labels))
        sums.total_weighted_labels += float(labels.sum())
        sums.total_weighted_predictions += float(predictions.sum())
        return sums


_BUFFERED = {
    calibration_histogram._CalibrationHistogramCombiner: _CalibrationHistogramCombiner,
    calibration._WeightedLabelsPredictionsExamplesCombiner: _WeightedLabelsPredictionsExamplesCombiner,
}


def _buffered(computations: metric_types.MetricComputations) -> metric_types.MetricComputations:
    """`computations` with TFMA's per-example combiners of `_BUFFERED` wrapped."""
    wrapped = []
    for computation in computations:
        buffered = (_BUFFERED.get(type(computation.combiner))
                    if isinstance(computation, metric_types.MetricComputation) else None)
        if buffered is not None:
            computation = metric_types.MetricComputation(keys=computation.keys,
                                                         preprocessors=computation.preprocessors,
                                                         combiner=buffered(computation.combiner))
        wrapped.append(computation)
    return wrapped


class BatchedAUC(confusion_matrix_metrics.AUC):
    """TFMA's AUC ("auc", same arguments and value), its calibration histogram buffered. (TFMA looks a
    metric class up by its name before its module: a class named AUC would be TFMA's.)"""

    def computations(self, *args, **kwargs) -> metric_types.MetricComputations:
        return _buffered(super().computations(*args, **kwargs))


class BatchedCalibration(calibration.Calibration):
    """TFMA's Calibration (sum of predictions / sum of labels), its sums buffered."""

    def computations(self, *args, **kwargs) -> metric_types.MetricComputations:
        return _buffered(super().computations(*args, **kwargs))


class BatchedMeanLabel(calibration.MeanLabel):
    """TFMA's MeanLabel, its sums buffered."""

    def computations(self, *args, **kwargs) -> metric_types.MetricComputations:
        return _buffered(super().computations(*args, **kwargs))


class BatchedMeanPrediction(calibration.MeanPrediction):
    """TFMA's MeanPrediction, its sums buffered."""

    def computations(self, *args, **kwargs) -> metric_types.MetricComputations:
        return _buffered(super().computations(*args, **kwargs))
