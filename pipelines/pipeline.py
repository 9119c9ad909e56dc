"""`create_pipeline(config)`: the one sparsectr pipeline definition, shared by every runner.

ExampleGen -> StatisticsGen -> SchemaGen (curated) -> ExampleValidator -> ValidationGate ->
Transform -> Trainer (warm start: LatestPushedModel) -> Evaluator (baseline: LatestPushedModel) ->
SparsityGate -> ServingCheck (the pruned candidate served in a fresh process) -> Pusher (PrunedPusher:
publishes the checked candidate atomically). Module code (preprocessing, training) lives in
`components/` and is referenced by module path, so the same definition runs locally and in the
pipeline image on Kubeflow.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import tensorflow_model_analysis as tfma
# Not `from tfx import v1`: that also imports tfx.v1.extensions (Google Cloud AI Platform), 3 s of
# start-up in every process that builds the pipeline.
from tfx.components import ExampleValidator, Trainer
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.orchestration import data_types, metadata
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.proto import example_gen_pb2, pusher_pb2, trainer_pb2
from tfx.utils import json_utils

from components.click_log_example_gen.component import ClickLogExampleGen, ingestion_kwargs
from components.dataset_spec import DatasetSpec, load_spec
from components.fast_statistics import StatisticsGen
from components.fast_transform import Transform
from components.pruned_pusher.component import PrunedPusher
from components.gates import BaselineEvaluator, LatestPushedModel, SparsityGate
from components.schema import schema_file_for, statistics_options
from components.serving_check.component import ServingCheck
from components.trainer_job import RUN_FN
from components.validation_gate import ValidationGate
from pipelines import runtime_parameters as runtime
from pipelines.config import PipelineConfig, beam_pipeline_args

PREPROCESSING_FN = "components.preprocessing.preprocessing_fn"
EVAL_METRICS_MODULE = "components.eval_metrics"
# The Evaluator's custom_eval_shared_model: TFMA's loader, signatures callable by position.
EVAL_MODEL_MODULE = "components.eval_model"


def eval_config(config: PipelineConfig, spec: DatasetSpec) -> tfma.EvalConfig:
    gates = config.gates
    slicing = [tfma.SlicingSpec()]
    if gates.slice_field:
        slicing.append(tfma.SlicingSpec(feature_keys=[gates.slice_field]))
    auc_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": gates.min_auc}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -gates.max_auc_drop}),
    )
    return tfma.EvalConfig(
        # The raw label: TFMA then needs no transform_features call of its own. The models are
        # generic SavedModels (signatures, no Keras traces): said here, TFMA does not load each one
        # as Keras first to find that out.
        model_specs=[tfma.ModelSpec(signature_name="serving_default", label_key=spec.label,
                                    model_type=tfma.TF_GENERIC)],
        slicing_specs=slicing,
        # components.eval_metrics: tf_keras BinaryCrossentropy's value, and TFMA's AUC and calibration
        # metrics, computed without TFMA's per-example conversion.
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(class_name="BatchedAUC", module=EVAL_METRICS_MODULE, threshold=auc_threshold),
            tfma.MetricConfig(class_name="BinaryLogLoss", module=EVAL_METRICS_MODULE),
            tfma.MetricConfig(class_name="BatchedCalibration", module=EVAL_METRICS_MODULE),
            tfma.MetricConfig(class_name="BatchedMeanPrediction", module=EVAL_METRICS_MODULE),
            tfma.MetricConfig(class_name="BatchedMeanLabel", module=EVAL_METRICS_MODULE),
        ])],
    )


def split_config(config: PipelineConfig) -> example_gen_pb2.Output:
    """ExampleGen's train/eval split: data.eval_split_buckets of the SPLIT_BUCKETS hash buckets are eval."""
    return example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
        example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=buckets) for name, buckets in config.data.split_buckets]))


def per_run_settings(config: PipelineConfig, data_root: str, spec: DatasetSpec,
                     runtime_parameters: bool = False) -> Dict[str, Any]:
    """{pipelines.runtime_parameters name: value} of the settings a compiled pipeline takes per run;
    with `runtime_parameters`, TFX RuntimeParameters whose defaults are those values."""
    values = {runtime.DATA_ROOT: data_root, runtime.SPAN_WINDOW: config.data.span_window,
              runtime.MAX_BAD_FRACTION: config.data.max_bad_fraction,
              # What TFX's Trainer would make of the dict itself (its custom_config JSON).
              runtime.TRAINER_CONFIG: json_utils.dumps({"trainer": config.trainer.to_json(),
                                                        "dataset_spec": spec.to_json()})}
    if not runtime_parameters:
        return values
    return {name: data_types.RuntimeParameter(name=name, ptype=runtime.TYPES[name],
                                              default=runtime.TYPES[name](value))
            for name, value in values.items()}


def create_pipeline(config: PipelineConfig, data_root: str, spec: Optional[DatasetSpec] = None,
                    metadata_connection_config=None, input_bytes: Optional[int] = None,
                    schema_file: Optional[str] = None, runtime_parameters: bool = False,
                    pipeline_root: Optional[str] = None) -> tfx_pipeline.Pipeline:
    """The sparsectr pipeline of `config` over the click logs at `data_root`.

    ``runtime_parameters``: the settings of ``pipelines.runtime_parameters`` (data root, span window,
    bad-line fraction, the Trainer's config) become runtime parameters, defaulting to the config's
    values (Kubeflow: overridable per run). ``pipeline_root``: where the steps write their outputs
    (default: config.pipeline_root, under the local output folder).
    """
    spec = spec or load_spec(config.data.dataset_format)
    components: List = []
    per_run = per_run_settings(config, data_root, spec, runtime_parameters)

    example_gen = ClickLogExampleGen(input_base=per_run[runtime.DATA_ROOT], dataset_spec=spec.to_json(),
                                     max_bad_fraction=per_run[runtime.MAX_BAD_FRACTION],
                                     max_quarantine_records_per_reason=config.data.max_quarantine_records_per_reason,
                                     output_config=split_config(config),
                                     **ingestion_kwargs(config.data.input_pattern, per_run[runtime.SPAN_WINDOW]))
    # The curated schema of the dataset spec, not one inferred from today's data (which would
    # accept any drift); the node keeps the SchemaGen id.
    schema_gen = ImportSchemaGen(
        schema_file=schema_file or schema_file_for(spec, config.output_dir)).with_id("SchemaGen")
    # tfx.components.StatisticsGen with bulk input (components/fast_statistics.py): the schema
    # tells it the features' types for decoding; the statistics are computed without it.
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
                                   stats_options=statistics_options())
    example_validator = ExampleValidator(statistics=statistics_gen.outputs["statistics"],
                                         schema=schema_gen.outputs["schema"])
    validation_gate = ValidationGate(anomalies=example_validator.outputs["anomalies"])
    # tfx.components.Transform with bulk input/output (components/fast_transform.py, issue #18).
    transform = Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        custom_config={"dataset_spec": spec.to_json()},
        # StatisticsGen already profiles the raw data; Transform's own pre/post statistics doubled
        # its run time for no reader.
        disable_statistics=True,
        materialize=config.data.materialize_transformed,
    )
    transform.add_upstream_node(validation_gate)
    # The baseline (and warm-start source): the newest version under the serving directory.
    latest_pushed = LatestPushedModel(model_base=os.path.join(config.serving_dir, config.serving.model_name))
    trainer = Trainer(
        run_fn=RUN_FN,
        # Without materialized output the Trainer transforms ExampleGen's examples per batch itself
        # (components.training.input_dataset).
        examples=(transform.outputs["transformed_examples"] if config.data.materialize_transformed
                  else example_gen.outputs["examples"]),
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=trainer_pb2.TrainArgs(num_steps=config.trainer.train_steps),
        eval_args=trainer_pb2.EvalArgs(num_steps=config.trainer.eval_steps),
        custom_config=(per_run[runtime.TRAINER_CONFIG] if runtime_parameters
                       else {"trainer": config.trainer.to_json(), "dataset_spec": spec.to_json()}),
        # Warm start from the last pushed model (components.warm_start); found=0 -> a cold start.
        base_model=latest_pushed.outputs["model"] if config.trainer.warm_start else None,
    )
    evaluator = BaselineEvaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=latest_pushed.outputs["model"],
        schema=schema_gen.outputs["schema"],
        eval_config=eval_config(config, spec),
        module_path=EVAL_MODEL_MODULE,
    ).with_id("Evaluator")
    sparsity_gate = SparsityGate(
        model=trainer.outputs["model"],
        evaluator_blessing=evaluator.outputs["blessing"],
        evaluation=evaluator.outputs["evaluation"],
        min_auc=config.gates.min_auc,
        max_auc_drop=config.gates.max_auc_drop,
        min_sparsity=config.gates.min_sparsity,
        min_sparsity_per_table=json.dumps(config.gates.min_sparsity_per_table, sort_keys=True),
        max_model_bytes=-1 if config.gates.max_model_bytes is None else config.gates.max_model_bytes,
    )
    # The candidate the Pusher will publish (pruned export + warmup requests), proven servable first:
    # loaded in a fresh serving process and asked over TF Serving's REST and gRPC APIs, within the
    # serving_check limits. Fail-closed: its blessing gates the push.
    limits = config.serving_check
    serving_check = ServingCheck(
        model=trainer.outputs["model"],
        model_blessing=sparsity_gate.outputs["blessing"],
        examples=example_gen.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"],
        model_name=config.serving.model_name,
        min_compact_bytes=config.serving.min_compact_bytes,
        sample_rows=limits.sample_rows,
        max_load_seconds=limits.max_load_seconds,
        max_peak_rss_mb=limits.max_peak_rss_mb,
        max_p99_latency_ms=limits.max_p99_latency_ms,
        max_score_diff=limits.max_score_diff,
        startup_timeout_seconds=limits.startup_timeout_seconds,
    )
    # TFX's Pusher with the pruning executor: publishes the ServingCheck's checked export atomically
    # to <serving_dir>/<model_name>/<version>/ with models.config.
    pusher = PrunedPusher(
        model=trainer.outputs["model"],
        model_blessing=sparsity_gate.outputs["blessing"],
        infra_blessing=serving_check.outputs["blessing"],
        examples=example_gen.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"],
        push_destination=pusher_pb2.PushDestination(filesystem=pusher_pb2.PushDestination.Filesystem(
            base_directory=config.serving_dir)),
        model_name=config.serving.model_name,
        keep_versions=config.serving.keep_versions,
        model_base_path=config.serving.model_base_path or "",
        min_compact_bytes=config.serving.min_compact_bytes,
    ).with_id("Pusher")
    components += [example_gen, statistics_gen, schema_gen, example_validator, validation_gate, transform,
                   latest_pushed, trainer, evaluator, sparsity_gate, serving_check, pusher]
    # After the push: the run report as an HTML artifact (rendered by the Kubeflow Pipelines UI) and,
    # with scoring.bulk_inference, BulkInferrer for backfills (pipelines/report_step.py).
    from pipelines.report_step import after_push_steps
    components += after_push_steps(config, example_gen, example_validator, trainer, evaluator, sparsity_gate,
                                   latest_pushed, pusher)
    if metadata_connection_config is None:
        metadata_connection_config = metadata.sqlite_metadata_connection_config(config.metadata_sqlite)
    return tfx_pipeline.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=pipeline_root or config.pipeline_root,
        components=components,
        enable_cache=False,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args(config, input_bytes),
    )
