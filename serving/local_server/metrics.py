"""Request counts and latencies, served at ``/monitoring/prometheus/metrics`` as TF Serving does."""
from __future__ import annotations

import threading
from typing import Dict, Iterable, Tuple

UNKNOWN_MODEL_LABEL = "__unknown__"


class Metrics:
    """Request counts and latency sums in Prometheus text format (TF Serving's metric names).

    Model names come from clients: any name not served here is counted as ``__unknown__``, so that
    bogus names neither grow the page without bound nor reach it unescaped.
    """

    def __init__(self, model_names: Iterable[str] = ()):
        self._model_names = frozenset(model_names)
        self._lock = threading.Lock()
        self._counts: Dict[Tuple[str, str, str], int] = {}
        self._latency_us: Dict[str, float] = {}

    def record(self, api: str, model: str, status: str, seconds: float) -> None:
        model = model if model in self._model_names else UNKNOWN_MODEL_LABEL
        with self._lock:
            key = (api, model, status)
            self._counts[key] = self._counts.get(key, 0) + 1
            self._latency_us[model] = self._latency_us.get(model, 0.0) + seconds * 1e6

    @staticmethod
    def label(value: str) -> str:
        """A label value as the Prometheus text format escapes it: backslash, double quote, line feed."""
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    def text(self) -> str:
        q = self.label
        lines = ["# TYPE :tensorflow:serving:request_count counter"]
        with self._lock:
            for (api, model, status), n in sorted(self._counts.items()):
                lines.append(f':tensorflow:serving:request_count{{api="{q(api)}",model_name="{q(model)}",'
                             f'status="{q(status)}"}} {n}')
            lines.append("# TYPE :tensorflow:serving:request_latency_sum counter")
            for model, us in sorted(self._latency_us.items()):
                lines.append(f':tensorflow:serving:request_latency_sum{{model_name="{q(model)}"}} {us:.0f}')
        return "\n".join(lines) + "\n"
