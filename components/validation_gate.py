"""ValidationGate: stops the run before Transform when ExampleValidator found anomalies.

TFX's ExampleValidator only records anomalies; a scheduled retrain must not train on data that
drifted from the schema, so this component fails the execution with the anomalies in one line.
"""

import os


from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts


class DataAnomaliesError(RuntimeError):
    """The statistics of the new data disagree with the schema."""


def read_anomalies(uri: str) -> dict:
    """'<split>:<feature>' -> short description, for every split of an ExampleAnomalies artifact."""
    import tensorflow as tf
    from tensorflow_metadata.proto.v0 import anomalies_pb2
    found = {}
    for split_dir in sorted(tf.io.gfile.listdir(uri)):
        split = split_dir.rstrip("/")
        path = os.path.join(uri, split, "SchemaDiff.pb")
        if not tf.io.gfile.exists(path):
            continue
        anomalies = anomalies_pb2.Anomalies.FromString(tf.io.gfile.GFile(path, "rb").read())
        for feature, info in sorted(anomalies.anomaly_info.items()):
            found[f"{split.replace('Split-', '')}:{feature}"] = info.short_description or info.description
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            found[f"{split.replace('Split-', '')}:<dataset>"] = info.short_description or info.description
    return found


@component
def ValidationGate(anomalies: InputArtifact[standard_artifacts.ExampleAnomalies]):
    found = read_anomalies(anomalies.uri)
    if found:
        listed = "; ".join(f"{k}: {v}" for k, v in found.items())
        raise DataAnomaliesError(f"data validation failed, {len(found)} anomalies (training stopped): {listed}")



