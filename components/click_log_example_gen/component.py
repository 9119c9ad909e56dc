"""ClickLogExampleGen: a FileBasedExampleGen that reads click logs through a dataset spec.

    from components.click_log_example_gen.component import ClickLogExampleGen, input_config_for
    example_gen = ClickLogExampleGen(
        input_base=data_root, dataset_spec=spec.to_json(), max_bad_fraction=0.01,
        input_config=input_config_for("day-{SPAN}/*.tsv"), span_window=7)
    example_gen.outputs["examples"]   # standard Examples artifact, splits train/eval (8:2)

It is a ``FileBasedExampleGen`` subclass (TFX's FileBasedDriver resolves ``{SPAN}``/date/
``{VERSION}`` patterns; Kubeflow V2 compiles it like any file-based ExampleGen); the extra
execution properties are plain str/float/int; ``input_base``, ``max_bad_fraction`` and
``span_window`` may be TFX RuntimeParameters (the Kubeflow pipeline's per-run settings), whose
defaults are checked here like plain values. See docs/ingestion.md.
"""
from __future__ import annotations

import json
from typing import Optional, Union

from tfx import types
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.orchestration import data_types
from tfx.proto import example_gen_pb2, range_config_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import proto_utils

from components.click_log_example_gen import executor, parsing
from components.dataset_spec import DatasetSpec, load_spec

DEFAULT_SPLIT_BUCKETS = (("train", 8), ("eval", 2))


class ClickLogExampleGenSpec(standard_component_specs.FileBasedExampleGenSpec):
    PARAMETERS = {
        **standard_component_specs.FileBasedExampleGenSpec.PARAMETERS,
        executor.DATASET_SPEC_KEY: ExecutionParameter(type=str),
        executor.MAX_BAD_FRACTION_KEY: ExecutionParameter(type=float),
        executor.SPAN_WINDOW_KEY: ExecutionParameter(type=int),
        executor.UNRESOLVED_INPUT_CONFIG_KEY: ExecutionParameter(type=str, optional=True),
        executor.MAX_QUARANTINE_RECORDS_KEY: ExecutionParameter(type=int, optional=True),
    }


def input_config_for(pattern: str = "*", split_name: str = "single_split") -> example_gen_pb2.Input:
    """One input split reading ``pattern`` (relative to input_base; may hold ``{SPAN}``,
    ``{YYYY}``/``{MM}``/``{DD}`` and ``{VERSION}``, TFX's span specs)."""
    return example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name=split_name, pattern=pattern)])


def ingestion_kwargs(pattern: str = "*", span_window: int = 1) -> dict:
    """Keyword arguments of ClickLogExampleGen for a pattern and a window of the newest N spans."""
    return {"input_config": input_config_for(pattern), "span_window": span_window}


def default_output_config(input_config: example_gen_pb2.Input) -> example_gen_pb2.Output:
    """train/eval hash buckets 8:2 for one input split; the input splits as they are otherwise."""
    if len(input_config.splits) > 1:
        return example_gen_pb2.Output()
    return example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
        example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=buckets)
        for name, buckets in DEFAULT_SPLIT_BUCKETS]))


def _has_span_spec(input_config: example_gen_pb2.Input) -> bool:
    specs = [example_gen_utils.SPAN_SPEC, "{SPAN:", *example_gen_utils.DATE_SPECS]
    return any(s in split.pattern for split in input_config.splits for s in specs)


def _value(setting):
    """A setting's value: itself, or a RuntimeParameter's default (what a run gets unless it overrides it)."""
    return setting.default if isinstance(setting, data_types.RuntimeParameter) else setting


def _spec_json(dataset_spec: Union[str, DatasetSpec]) -> str:
    if isinstance(dataset_spec, DatasetSpec):
        return dataset_spec.to_json()
    if dataset_spec.lstrip().startswith("{"):
        return DatasetSpec.from_json(dataset_spec).to_json()  # validates
    # A built-in name or a spec file: resolved now, so the compiled pipeline carries the spec.
    return load_spec(dataset_spec).to_json()


class ClickLogExampleGen(FileBasedExampleGen):
    """Reads click-log files (any layout a DatasetSpec describes) into tf.Examples.

    Outputs: ``examples`` (``standard_artifacts.Examples``; splits ``train``/``eval`` by default;
    quarantine records under ``<uri>/quarantine/``, copied to ``<pipeline_root>/<node id>/quarantine/
    <execution id>/`` when the bad fraction fails the run; counts as custom properties, see
    docs/contracts.md).
    """

    SPEC_CLASS = ClickLogExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self,
                 input_base: Union[str, data_types.RuntimeParameter],
                 dataset_spec: Union[str, DatasetSpec],
                 max_bad_fraction: Union[float, data_types.RuntimeParameter] = 0.01,
                 input_config: Optional[example_gen_pb2.Input] = None,
                 output_config: Optional[example_gen_pb2.Output] = None,
                 range_config: Optional[range_config_pb2.RangeConfig] = None,
                 span_window: Union[int, data_types.RuntimeParameter] = 1,
                 output_file_format: int = example_gen_pb2.FORMAT_TFRECORDS_GZIP,
                 max_quarantine_records_per_reason: int = parsing.DEFAULT_MAX_RECORDS_PER_REASON):
        """
        Args:
          input_base: folder of click-log files.
          dataset_spec: DatasetSpec JSON (``spec.to_json()``), a DatasetSpec, a built-in spec name
            (``criteo``, ``criteo-kaggle``, ``avazu``) or a spec file path.
          max_bad_fraction: fail the execution when quarantined / read rows exceeds this.
          input_config: ``example_gen_pb2.Input``; default one split ``*``.
          output_config: ``example_gen_pb2.Output``; default train/eval hash buckets 8:2.
          range_config: TFX range config for the (newest) span: a StaticRange of one span, or unset
            for the latest span.
          span_window: with a span spec in the pattern, also read the N-1 spans before the
            resolved one (missing spans are skipped).
          max_quarantine_records_per_reason: quarantine records kept per (reason, input file); bad
            lines beyond it are counted (``quarantined_by_reason`` stays exact) but not stored, and
            counted in ``quarantine_records_dropped``. 0 keeps counts only.
        """
        if not 0.0 <= float(_value(max_bad_fraction)) <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {_value(max_bad_fraction)}")
        if int(_value(span_window)) < 1:
            raise ValueError(f"span_window must be >= 1, got {_value(span_window)}")
        if int(max_quarantine_records_per_reason) < 0:
            raise ValueError(
                f"max_quarantine_records_per_reason must be >= 0, got {max_quarantine_records_per_reason}")
        spec_json = _spec_json(dataset_spec)
        input_config = input_config or input_config_for("*")
        if isinstance(input_config, dict):
            input_config = proto_utils.dict_to_proto(input_config, example_gen_pb2.Input())
        if int(_value(span_window)) > 1 and not _has_span_spec(input_config):
            raise ValueError(
                f"span_window={_value(span_window)} needs a {{SPAN}} or {{YYYY}}{{MM}}{{DD}} spec in the input "
                f"pattern, got {[s.pattern for s in input_config.splits]}")
        output_config = output_config or default_output_config(input_config)
        spec = ClickLogExampleGenSpec(
            input_base=input_base,
            input_config=input_config,
            output_config=output_config,
            custom_config=None,
            range_config=range_config,
            output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
            output_file_format=output_file_format,
            dataset_spec=spec_json,
            max_bad_fraction=(max_bad_fraction if isinstance(max_bad_fraction, data_types.RuntimeParameter)
                              else float(max_bad_fraction)),
            span_window=span_window if isinstance(span_window, data_types.RuntimeParameter) else int(span_window),
            max_quarantine_records_per_reason=int(max_quarantine_records_per_reason),
            # The driver replaces the span specs in input_config with the newest span; the
            # executor needs the patterns as written to find the older spans of the window.
            unresolved_input_config=proto_utils.proto_to_json(input_config),
            examples=types.Channel(type=standard_artifacts.Examples))
        # FileBasedExampleGen.__init__ builds its own (narrower) spec, so skip to the base class.
        base_beam_component.BaseBeamComponent.__init__(self, spec=spec)
