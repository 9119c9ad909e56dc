"""TFMA metrics of the Evaluator's eval_config that TFMA's own would compute too slowly at scale.

`BinaryLogLoss`: tf_keras's BinaryCrossentropy metric (probabilities clipped to [1e-7, 1 - 1e-7],
the mean over examples), named ``binary_crossentropy`` as before. Computed by TFMA, the tf_keras metric
made the Evaluator ~10% slower on one eval file of a 10M-row day (56 vs 51 s,
benchmarks/results/evaluator_metrics.txt); this combiner was ~1% of a profiled Evaluator run. It reads
the label and prediction of an unweighted single-output model straight from the example, buffers them
and sums the loss with NumPy a block at a time; any other example (weights, several outputs,
multi-dimensional labels) goes through TFMA's `metric_util.to_label_prediction_example_weight`, with
the same value.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

import apache_beam as beam
import numpy as np
from tensorflow_model_analysis.metrics import metric_types, metric_util

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
        if not key.example_weighted and key.sub_key is None:
            label = _scalar(element.label, key.model_name, key.output_name)
            probability = _scalar(element.prediction, key.model_name, key.output_name)
            if label is not None and probability is not None:
                accumulator.labels.append(label.item())
                accumulator.probabilities.append(probability.item())
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
