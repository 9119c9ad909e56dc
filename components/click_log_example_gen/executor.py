"""ClickLogExampleGen executor: TFX's file-based ExampleGen with a spec-driven click-log parser.

The output is what TFX's ``BaseExampleGenExecutor`` writes (gzipped TFRecords of tf.Examples under
``Split-<name>/``, TFX's sha256 hash split into train/eval, ``split_names``, ``payload_format``),
but written by the call that parses a file (``_ParseAndWriteFileFn``): one Beam element per input
file instead of one per row through TFX's Partition, Reshuffle and WriteToTFRecord (which the
DirectRunner holds in memory, all rows at once). Files are parsed a block at a time by the fast
path (``block_parsing``), every line it does not vouch for by the per-line parser
(``parsing.FileParser``). This executor adds

* per input split, the parse-and-write step and the quarantine records and a counts file under
  ``<examples uri>/quarantine/``;
* the window of older spans (``span_window``): TFX's driver resolves only the newest span, so the
  executor resolves the older ones itself from the unresolved input patterns;
* after the pipeline: the counts as artifact custom properties, and the ``max_bad_fraction`` check,
  which on failure copies the quarantine out of the artifact (``durable_quarantine_dir``), since
  TFX deletes a failed execution's outputs.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
from absl import logging
from apache_beam.io.filesystems import FileSystems
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen import write_split
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.components.util import examples_utils
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2, range_config_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from components.beam_dependencies import NoSdistOnDirectRunner
from components.click_log_example_gen import parsing, writing
from components.dataset_spec import DatasetSpec

# Execution properties added by ClickLogExampleGenSpec (all JSON-serialisable primitives).
DATASET_SPEC_KEY = "dataset_spec"  # DatasetSpec JSON
MAX_BAD_FRACTION_KEY = "max_bad_fraction"  # float in [0, 1]
SPAN_WINDOW_KEY = "span_window"  # int >= 1: ingest the newest N spans
UNRESOLVED_INPUT_CONFIG_KEY = "unresolved_input_config"  # input_config JSON before the driver's span resolution
MAX_QUARANTINE_RECORDS_KEY = "max_quarantine_records_per_reason"  # int >= 0, per (reason, file)

QUARANTINE_DIRNAME = "quarantine"
COUNTS_PREFIX = "counts-"
RECORDS_PREFIX = "records-"

# Internal keys the executor adds to exec_properties for its PTransform (like the base's
# '_beam_pipeline_args'); never set by users.
_QUARANTINE_DIR = "_click_log_quarantine_dir"
_FILE_PATTERNS = "_click_log_file_patterns"  # JSON {resolved split pattern: [patterns of the window]}


class BadRowsError(RuntimeError):
    """More rows were quarantined than ``max_bad_fraction`` allows. The message is one line."""


def _split_name(exec_properties: Dict[str, Any], split_pattern: str) -> str:
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
    for split in input_config.splits:
        if split.pattern == split_pattern:
            return split.name
    return "split"


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(bytes)
def _ClickLogToExample(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],
                       split_pattern: str) -> beam.pvalue.PCollection:
    """One input split -> serialized tf.Examples; quarantine records and counts go to files."""
    input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
    window = json.loads(exec_properties.get(_FILE_PATTERNS) or "{}")
    patterns = window.get(split_pattern) or [split_pattern]
    file_patterns = [os.path.join(input_base, p) for p in patterns]
    quarantine_dir = exec_properties[_QUARANTINE_DIR]
    tag = _split_name(exec_properties, split_pattern)

    max_records = exec_properties.get(MAX_QUARANTINE_RECORDS_KEY)
    if max_records is None:
        max_records = parsing.DEFAULT_MAX_RECORDS_PER_REASON
    parsed = pipeline | "Parse" >> parsing.ParseClickLogs(
        file_patterns, exec_properties[DATASET_SPEC_KEY], int(max_records))
    _ = (parsed["quarantine"]
         | "WriteQuarantine" >> beam.io.WriteToText(
             os.path.join(quarantine_dir, RECORDS_PREFIX + tag), file_name_suffix=".jsonl"))
    _ = (parsed["file_counts"]
         | "MergeCounts" >> beam.CombineGlobally(parsing.MergeCountsFn())
         | "CountsToJson" >> beam.Map(lambda counts: json.dumps(counts, sort_keys=True))
         | "WriteCounts" >> beam.io.WriteToText(
             os.path.join(quarantine_dir, COUNTS_PREFIX + tag), file_name_suffix=".json",
             shard_name_template=""))
    return parsed["examples"]


def file_size(path: str) -> int:
    return FileSystems.match([path])[0].metadata_list[0].size_in_bytes


def match_files(file_patterns: Sequence[str]) -> List[str]:
    """The readable files the patterns match, each once, sorted (a pattern matching nothing: none)."""
    paths = set()
    for pattern in file_patterns:
        try:
            results = FileSystems.match([pattern])
        except Exception as e:  # noqa: BLE001 - beam raises BeamIOError for a missing plain path
            logging.warning("ClickLogExampleGen: %s matched no files: %s", pattern, e)
            continue
        for result in results:
            for metadata in result.metadata_list:
                if parsing._is_readable_file(metadata.path):
                    paths.add(metadata.path)
    return sorted(paths)


def _output_plan(exec_properties: Dict[str, Any]) -> List[Tuple[str, str, List[str], Optional[List[int]]]]:
    """[(input split name, its pattern, output split names, hash buckets or None)] (TFX's rules:
    with output splits, the one input split is divided among them by hash; without, each input
    split is an output split of its own)."""
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
    output_config = example_gen_pb2.Output()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY], output_config)
    example_gen_utils.generate_output_split_names(input_config, output_config)  # validates
    splits = output_config.split_config.splits
    if splits:
        if output_config.split_config.partition_feature_name:
            raise ValueError("ClickLogExampleGen: split_config.partition_feature_name is not supported; "
                             "splits are by hash of the whole example")
        one = input_config.splits[0]
        return [(one.name, one.pattern, [s.name for s in splits], [s.hash_buckets for s in splits])]
    return [(s.name, s.pattern, [s.name], None) for s in input_config.splits]


def window_patterns(exec_properties: Dict[str, Any]) -> Dict[str, List[str]]:
    """{resolved split pattern: the patterns of every span in the window, oldest first}.

    The driver has resolved the newest span (``exec_properties['span']``) into the input config;
    older spans are resolved here the same way (TFX's own span/version matching, with a static
    range of that one span). Spans missing from the input base are skipped with a warning.
    """
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
    span_window = int(exec_properties.get(SPAN_WINDOW_KEY) or 1)
    unresolved_json = exec_properties.get(UNRESOLVED_INPUT_CONFIG_KEY)
    result = {split.pattern: [split.pattern] for split in input_config.splits}
    if span_window <= 1 or not unresolved_json:
        return result
    unresolved = example_gen_pb2.Input()
    proto_utils.json_to_proto(unresolved_json, unresolved)
    newest = int(exec_properties.get(example_gen_utils.SPAN_PROPERTY_NAME) or 0)
    input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
    older: Dict[int, List[str]] = {}
    for span in range(max(0, newest - span_window + 1), newest):
        splits = [example_gen_pb2.Input.Split(name=s.name, pattern=s.pattern) for s in unresolved.splits]
        range_config = range_config_pb2.RangeConfig(static_range=range_config_pb2.StaticRange(
            start_span_number=span, end_span_number=span))
        try:
            # Rewrites each split's pattern to the span (and its newest version).
            example_gen_utils.calculate_splits_fingerprint_span_and_version(input_base, splits, range_config)
        except ValueError as e:
            logging.warning("ClickLogExampleGen: span %d of the window is missing, skipped: %s", span, e)
            continue
        older[span] = [s.pattern for s in splits]
    for i, split in enumerate(input_config.splits):
        result[split.pattern] = [older[span][i] for span in sorted(older)] + [split.pattern]
    return result


def read_counts(quarantine_dir: str) -> Dict[str, Any]:
    """Merges the per-split counts files the pipeline wrote."""
    files = sorted(fileio.glob(os.path.join(quarantine_dir, COUNTS_PREFIX + "*.json")))
    counts = []
    for path in files:
        with fileio.open(path, "r") as f:
            counts.extend(json.loads(line) for line in f.read().splitlines() if line.strip())
    return parsing.merge_counts(counts)


def check_bad_fraction(counts: Dict[str, Any], max_bad_fraction: float, quarantine_uri: str) -> None:
    """Raises BadRowsError (one line, with the counts) when too many rows were quarantined."""
    read, bad = counts["rows_read"], counts["rows_quarantined"]
    if read and bad / read > max_bad_fraction:
        dropped = sum(counts.get("records_dropped_by_reason", {}).values())
        not_stored = (f" ({dropped} of them counted, not stored: over the cap per reason and file)"
                      if dropped else "")
        raise BadRowsError(
            f"ClickLogExampleGen: {bad} of {read} rows quarantined ({bad / read:.2%}) > "
            f"max_bad_fraction {max_bad_fraction:.2%}; by reason "
            f"{json.dumps(counts['quarantined_by_reason'], sort_keys=True)}; records in "
            f"{quarantine_uri}{not_stored}")


def durable_quarantine_dir(examples_uri: str) -> str:
    """Where a failed execution's quarantine is kept: outside its Examples artifact.

    TFX's launcher deletes the output artifacts of a failed execution
    (``tfx.orchestration.portable.launcher._run_executor`` -> ``outputs_utils.remove_output_dirs``),
    the quarantine inside them included. Its output URIs are ``<pipeline_root>/<node id>/<output
    key>/<execution id>``, so ``<pipeline_root>/<node id>/quarantine/<execution id>`` is beside
    them, per node and execution, and nothing of TFX's. Other layouts get a sibling of the artifact.
    """
    uri = examples_uri.rstrip("/")
    execution = os.path.basename(uri)
    if execution.isdigit():
        return os.path.join(os.path.dirname(os.path.dirname(uri)), QUARANTINE_DIRNAME, execution)
    return uri + "-" + QUARANTINE_DIRNAME


def copy_files(source: str, destination: str) -> None:
    """Copies the files directly in ``source`` (the quarantine is flat) into a new ``destination``."""
    if fileio.exists(destination):
        fileio.rmtree(destination)
    fileio.makedirs(destination)
    for name in fileio.listdir(source):
        path = os.path.join(source, name)
        if not fileio.isdir(path):
            fileio.copy(path, os.path.join(destination, name))


class Executor(NoSdistOnDirectRunner, BaseExampleGenExecutor):
    """Click-log lines -> tf.Examples (train/eval), bad lines -> quarantine, counts -> properties."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _ClickLogToExample

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        spec_json = exec_properties[DATASET_SPEC_KEY]
        DatasetSpec.from_json(spec_json)  # fail before the pipeline on a bad spec
        max_bad_fraction = float(exec_properties.get(MAX_BAD_FRACTION_KEY, 0.01))
        examples = artifact_utils.get_single_instance(output_dict[standard_component_specs.EXAMPLES_KEY])
        quarantine_dir = os.path.join(examples.uri, QUARANTINE_DIRNAME)
        durable_dir = durable_quarantine_dir(examples.uri)
        # A retried execution must not count, or leave behind, the last try's records.
        for stale in (quarantine_dir, durable_dir):
            if fileio.exists(stale):
                fileio.rmtree(stale)
        fileio.makedirs(quarantine_dir)

        exec_properties = dict(exec_properties)
        file_patterns = window_patterns(exec_properties)
        exec_properties[_FILE_PATTERNS] = json.dumps(file_patterns)
        exec_properties[_QUARANTINE_DIR] = quarantine_dir
        logging.info("ClickLogExampleGen: reading %s", file_patterns)

        self._log_startup(input_dict, output_dict, exec_properties)
        plan = _output_plan(exec_properties)
        output_names = [name for _, _, names, _ in plan for name in names]
        examples.split_names = artifact_utils.encode_split_names(output_names)
        max_records = exec_properties.get(MAX_QUARANTINE_RECORDS_KEY)
        if max_records is None:
            max_records = parsing.DEFAULT_MAX_RECORDS_PER_REASON
        if int(max_records) < 0:
            raise ValueError(f"max_quarantine_records_per_reason must be >= 0, got {max_records}")
        input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
        split_dirs = []
        with self._make_beam_pipeline() as pipeline:
            for input_name, pattern, names, buckets in plan:
                files = match_files([os.path.join(input_base, p) for p in file_patterns.get(pattern) or [pattern]])
                plan, shards = writing.shard_plan([file_size(f) for f in files])
                logging.info("ClickLogExampleGen: split %s: %d files, %d shards per output split", input_name,
                             len(files), shards)
                dirs = [artifact_utils.get_split_uri([examples], name) for name in names]
                split_dirs.extend(dirs)
                for d in dirs:
                    if fileio.exists(d):  # a retried execution: its last try's shards
                        fileio.rmtree(d)
                    fileio.makedirs(d)
                tag = input_name
                parsed = (pipeline
                          | f"Files[{tag}]" >> beam.Create([(first, n, f) for (first, n), f in zip(plan, files)])
                          # one element per file: spread the files over the workers
                          | f"Spread[{tag}]" >> beam.Reshuffle()
                          | f"ParseAndWrite[{tag}]" >> beam.ParDo(writing.ParseAndWriteFileFn(
                              spec_json, int(max_records), dirs, buckets, shards)).with_outputs(
                                  "quarantine", "file_counts"))
                _ = (parsed.quarantine
                     | f"WriteQuarantine[{tag}]" >> beam.io.WriteToText(
                         os.path.join(quarantine_dir, RECORDS_PREFIX + tag), file_name_suffix=".jsonl"))
                _ = (parsed.file_counts
                     | f"MergeCounts[{tag}]" >> beam.CombineGlobally(parsing.MergeCountsFn())
                     | f"CountsToJson[{tag}]" >> beam.Map(parsing.counts_json)
                     | f"WriteCounts[{tag}]" >> beam.io.WriteToText(
                         os.path.join(quarantine_dir, COUNTS_PREFIX + tag), file_name_suffix=".json",
                         shard_name_template=""))
        removed = writing.remove_temp_files(split_dirs)
        if removed:
            logging.warning("ClickLogExampleGen: removed %d partial shards of retried work", len(removed))
        payload_format = exec_properties.get(standard_component_specs.OUTPUT_DATA_FORMAT_KEY)
        if payload_format:
            examples_utils.set_payload_format(examples, payload_format)
        file_format = exec_properties.get(standard_component_specs.OUTPUT_FILE_FORMAT_KEY)
        if file_format:
            examples_utils.set_file_format(examples, write_split.to_file_format_str(file_format))

        counts = read_counts(quarantine_dir)
        if counts["rows_read"] != counts["rows_emitted"] + counts["rows_quarantined"]:
            raise RuntimeError(f"ClickLogExampleGen: internal count mismatch {counts}")  # never expected
        examples.set_int_custom_property("rows_read", counts["rows_read"])
        examples.set_int_custom_property("rows_emitted", counts["rows_emitted"])
        examples.set_int_custom_property("rows_quarantined", counts["rows_quarantined"])
        examples.set_string_custom_property(
            "quarantined_by_reason", json.dumps(counts["quarantined_by_reason"], sort_keys=True))
        examples.set_string_custom_property(
            "negative_ints_by_field", json.dumps(counts["negative_ints_by_field"], sort_keys=True))
        examples.set_string_custom_property(
            "underivable_by_field", json.dumps(counts["underivable_by_field"], sort_keys=True))
        dropped = counts["records_dropped_by_reason"]
        examples.set_int_custom_property("quarantine_records_dropped", sum(dropped.values()))
        examples.set_string_custom_property(
            "quarantine_records_dropped_by_reason", json.dumps(dropped, sort_keys=True))
        examples.set_string_custom_property("quarantine_uri", quarantine_dir)
        examples.set_int_custom_property("files_read", counts["files"])
        logging.info("ClickLogExampleGen counts: %s", json.dumps(
            {k: v for k, v in counts.items() if k != "by_file"}, sort_keys=True))

        if counts["files"] == 0 or counts["rows_read"] == 0:
            raise BadRowsError(
                f"ClickLogExampleGen: no rows read ({counts['files']} files matched "
                f"{sorted(p for ps in file_patterns.values() for p in ps)} under "
                f"{exec_properties[standard_component_specs.INPUT_BASE_KEY]})")
        try:
            check_bad_fraction(counts, max_bad_fraction, durable_dir)
        except BadRowsError:
            # The orchestrator deletes this execution's outputs next; the copy is what stays.
            copy_files(quarantine_dir, durable_dir)
            logging.error("ClickLogExampleGen: quarantine copied to %s", durable_dir)
            raise
