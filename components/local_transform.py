"""TF Transform's analysis of the project's `preprocessing_fn` over in-memory rows (Beam in memory),
written where TFX's Transform writes it, and the transformed rows as numpy: for the benchmarks and
tests that train real models on Transform's output without running the whole pipeline."""
import os
import tempfile
from typing import Dict, Optional, Sequence


def analyze(spec, serialized: Sequence[bytes], out_dir: str, batch_size: Optional[int] = None,
            temp_dir: Optional[str] = None) -> None:
    """Write the transform graph of `preprocessing_fn` fitted on `serialized` tf.Examples to `out_dir`.

    `batch_size`: rows per analyzer batch, read in order (None: TF Transform's own batching);
    `temp_dir`: where TF Transform's scratch files go (None: a new system temp folder).
    """
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io
    from tfx_bsl.public import tfxio

    from components.preprocessing import preprocessing_fn
    from components.schema import curated_schema

    source = tfxio.TFExampleBeamRecord(physical_format="inmem", telemetry_descriptors=["local_transform"],
                                       schema=curated_schema(spec), raw_record_column_name=None)
    spec_json = spec.to_json()
    context = {"temp_dir": tempfile.mkdtemp(dir=temp_dir)}
    create, read = beam.Create(serialized), source.BeamSource()
    if batch_size:
        context["desired_batch_size"] = batch_size
        create, read = beam.Create(serialized, reshuffle=False), source.BeamSource(batch_size=batch_size)
    with beam.Pipeline(argv=["--runner=DirectRunner", "--direct_running_mode=in_memory"]) as p:
        with tft_beam.Context(**context):
            raw = p | create | read
            transform_fn = (raw, source.TensorAdapterConfig()) | tft_beam.AnalyzeDataset(
                lambda inputs: preprocessing_fn(inputs, {"dataset_spec": spec_json}))
            _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
    # TFX's Transform also writes the raw schema beside the transform function.
    metadata_io.write_metadata(dataset_metadata.DatasetMetadata(curated_schema(spec)),
                               os.path.join(out_dir, tft.TFTransformOutput.RAW_METADATA_DIR))


def transformed(tft_output, serialized: Sequence[bytes], batch: int = 4096) -> Dict:
    """{feature: numpy array} of the transformed rows (the Trainer's inputs, label included)."""
    import numpy as np
    import tensorflow as tf

    layer = tft_output.transform_features_layer()
    spec = tft_output.raw_feature_spec()
    parts = [layer(tf.io.parse_example(tf.constant(serialized[i:i + batch]), spec))
             for i in range(0, len(serialized), batch)]
    return {k: np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]}
