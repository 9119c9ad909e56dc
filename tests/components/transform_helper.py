"""TF Transform's analysis of the project's `preprocessing_fn` over in-memory rows (Beam in memory),
written where TFX's Transform writes it: shared by the tests that train real models without running
the whole pipeline."""
import os
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def analyze(spec, serialized, out_dir):
    """Write the transform graph of `preprocessing_fn` fitted on `serialized` tf.Examples to `out_dir`."""
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io
    from tfx_bsl.public import tfxio

    from components.preprocessing import preprocessing_fn
    from components.schema import curated_schema

    source = tfxio.TFExampleBeamRecord(physical_format="inmem", telemetry_descriptors=["test"],
                                       schema=curated_schema(spec), raw_record_column_name=None)
    with beam.Pipeline(argv=["--runner=DirectRunner", "--direct_running_mode=in_memory"]) as p:
        with tft_beam.Context(temp_dir=tempfile.mkdtemp()):
            raw = p | beam.Create(serialized) | source.BeamSource()
            transform_fn = (raw, source.TensorAdapterConfig()) | tft_beam.AnalyzeDataset(
                lambda inputs: preprocessing_fn(inputs, {"dataset_spec": spec.to_json()}))
            _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
    # TFX's Transform also writes the raw schema beside the transform function.
    metadata_io.write_metadata(dataset_metadata.DatasetMetadata(curated_schema(spec)),
                               os.path.join(out_dir, tft.TFTransformOutput.RAW_METADATA_DIR))


def transformed(tft_output, serialized, batch=4096):
    """{feature: numpy array} of the transformed rows (the Trainer's inputs, label included)."""
    import numpy as np
    import tensorflow as tf

    layer = tft_output.transform_features_layer()
    spec = tft_output.raw_feature_spec()
    parts = [layer(tf.io.parse_example(tf.constant(serialized[i:i + batch]), spec))
             for i in range(0, len(serialized), batch)]
    return {k: np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]}
