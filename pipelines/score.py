"""`python -m pipelines score`: batch scoring of click-log files with a pushed model (TFX's BulkInferrer job).

    python -m pipelines score --data PATH --format criteo --model output/serving [--output preds.csv]

* Lines are read and parsed exactly as ClickLogExampleGen reads them (``iter_numbered_lines`` and
  ``LineParser`` of components/click_log_example_gen/parsing.py: the same oversized-line limit,
  UTF-8 check, header skip and field rules) into the serialized tf.Examples that the model's
  ``serving_default`` signature takes;
* they are scored by ``serving.local_server.ServedVersion``, the code that answers the local TF
  Serving's REST and gRPC predict: the same SavedModel load, signature and call;
* bad lines are quarantined as ExampleGen does: counted by reason, and the first
  ``--max-quarantine-records`` per (reason, file) written as JSON lines (``reason``, ``file``,
  ``line_number``, ``line``, ``line_bytes``, ``detail``) to ``<output>.quarantine/`` (or
  ``--quarantine DIR``); more than ``--max-bad-fraction`` bad lines exits 1 after writing everything;
* streaming: files are read line by line and scored ``--batch-size`` rows at a time, predictions
  written as they come (``.csv``: ``file,line_number,label,probability``; ``.tfrecord`` /
  ``.tfrecord.gz``: one tf.Example per row with the same features); with labels, AUC (a histogram of
  2^20 score bins: pairs of scores under 1e-6 apart count one half), log loss and calibration
  (sum of predictions / sum of labels, TFMA's definition) are accumulated in constant memory.

`--model` is a serving base dir (``output/serving``, the model under ``--model-name``), a model dir
(``output/serving/ctr``, its newest numeric version, as TF Serving picks it) or a version dir.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from serving import DEFAULT_MODEL_NAME, model_versions

AUC_BINS = 1 << 20
LOGLOSS_EPSILON = 1e-7  # Keras' (and so TFMA's) clipping of binary cross-entropy
_UTF8_BOM = b"\xef\xbb\xbf"
OUTPUT_FORMATS = ("csv", "tfrecord")


class ScoreError(ValueError):
    """A scoring input that cannot be used; the message is one line."""


# -- the model ---------------------------------------------------------------------------------------
def resolve_model(path: str, model_name: str = DEFAULT_MODEL_NAME, version: Optional[int] = None) -> Tuple[int, str]:
    """(version, version dir) of ``path``: a version dir, a model dir or a serving base dir."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise ScoreError(f"--model {path}: no such directory")
    if model_versions.is_complete(path):
        name = os.path.basename(path.rstrip("/"))
        if version is not None and name != str(version):
            raise ScoreError(f"--model {path} is version {name}, not --version {version}")
        return (int(name) if name.isdigit() else 0), path
    versions = model_versions.versions(path)
    if versions:
        chosen = version if version is not None else versions[-1]
        if chosen not in versions:
            raise ScoreError(f"--model {path}: no version {chosen} (found {', '.join(map(str, versions))})")
        return chosen, os.path.join(path, str(chosen))
    if os.path.isdir(os.path.join(path, model_name)):
        return resolve_model(os.path.join(path, model_name), model_name, version)
    raise ScoreError(f"--model {path}: no SavedModel version under it (give the serving dir, "
                     f"<serving dir>/{model_name} or a version folder)")


class Model:
    """A pushed SavedModel scored as the local TF Serving scores it (``ServedVersion.run``)."""

    def __init__(self, version: int, path: str, signature_name: str = "serving_default"):
        from serving.local_server.repository import ServedVersion
        from serving.signatures import pick_signature
        self.version, self.path = version, path
        self.served = ServedVersion(version, path)
        self.signature = pick_signature(self.served.signatures, signature_name)
        inputs = [name for name, spec in self.signature.inputs.items() if spec.dtype == "DT_STRING"]
        if len(self.signature.inputs) != 1 or not inputs:
            raise ScoreError(f"signature {signature_name!r} of {path} does not take serialized tf.Examples "
                             f"(inputs: {sorted(self.signature.inputs)})")
        self.input_name = inputs[0]
        outputs = list(self.signature.outputs)
        self.output_name = "probability" if "probability" in outputs else outputs[0]

    def predict(self, examples: Sequence[bytes]) -> np.ndarray:
        outputs = self.served.run(self.signature, {self.input_name: list(examples)})
        return np.asarray(outputs[self.output_name], dtype=np.float64).reshape(len(examples), -1)[:, 0]


# -- the lines -----------------------------------------------------------------------------------------
def data_files(path: str) -> List[str]:
    """The click-log files of ``path``: itself, or the non-hidden files under it (sorted)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise ScoreError(f"--data {path}: no such file or directory")
    files = sorted(os.path.join(r, n) for r, ds, names in os.walk(path, followlinks=True)
                   for n in names if not n.startswith("."))
    if not files:
        raise ScoreError(f"--data {path}: the folder holds no click-log files")
    return files


class Quarantine:
    """Bad lines as ExampleGen keeps them: every one counted, the first ``max_records`` per (reason,
    file) written (the file is created with the first record)."""

    def __init__(self, directory: str, max_records: int):
        self.directory = directory
        self.max_records = max_records
        self.by_reason: Dict[str, int] = {}
        self.dropped_by_reason: Dict[str, int] = {}
        self._per_file: Dict[Tuple[str, str], int] = {}
        self._out = None
        self.path = os.path.join(directory, "records-score-00000-of-00001.jsonl")

    def add(self, rejection, path: str, line_number: int, content: bytes, line_bytes: int) -> None:
        from components.click_log_example_gen.line_parser import quarantine_record
        reason = rejection.reason
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        seen = self._per_file.get((reason, path), 0) + 1
        self._per_file[(reason, path)] = seen
        if seen > self.max_records:
            self.dropped_by_reason[reason] = self.dropped_by_reason.get(reason, 0) + 1
            return
        if self._out is None:
            os.makedirs(self.directory, exist_ok=True)
            self._out = open(self.path, "w", encoding="utf-8")
        self._out.write(quarantine_record(reason, path, line_number, content, line_bytes, rejection.detail) + "\n")

    @property
    def written(self) -> bool:
        return self._out is not None

    @property
    def count(self) -> int:
        return sum(self.by_reason.values())

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


def parsed_rows(files: Sequence[str], spec, quarantine: Quarantine,
                counts: Dict[str, int]) -> Iterator[Tuple[str, int, bytes, Optional[int]]]:
    """(file, line number, serialized tf.Example, label or None) of every good line, streaming.

    The per-line decisions are ClickLogExampleGen's (parsing._ParseFileFn.process): BOM, oversized
    line, UTF-8, the header (only as a file's first line), then LineParser.parse.
    """
    from components.click_log_example_gen.line_parser import (LineParser, ParsedRow, Rejection, iter_numbered_lines,
                                                              parse_int)
    parser = LineParser(spec)
    names = [c.name for c in spec.file_columns]
    label_index = names.index(spec.label)
    label_float = spec.column(spec.label).allow_float_format
    for path in files:
        with open(path, "rb") as stream:
            for line_number, content, line_bytes in iter_numbered_lines(stream, spec.max_line_bytes):
                if line_number == 1 and content.startswith(_UTF8_BOM):
                    content = content[len(_UTF8_BOM):]
                    line_bytes -= len(_UTF8_BOM)
                text = None
                if line_bytes > spec.max_line_bytes:
                    result: Any = Rejection("oversized_line",
                                            f"{line_bytes} bytes > max_line_bytes {spec.max_line_bytes}")
                else:
                    result = parser.decode(content)
                    if isinstance(result, str):
                        text = result
                        if line_number == 1 and spec.header and parser.is_header(text):
                            counts["headers_skipped"] += 1
                            continue
                        result = parser.parse(text)
                counts["rows_read"] += 1
                if isinstance(result, ParsedRow):
                    raw = text.split(spec.delimiter)[label_index].strip()
                    label = int(raw) if raw in ("0", "1") else parse_int(raw, label_float)
                    yield path, line_number, result.example, label
                else:
                    if line_number == 1 and spec.header:
                        result.detail += " (first line of the file, but not the spec's header: read as a row)"
                    quarantine.add(result, path, line_number, content, line_bytes)


# -- metrics ---------------------------------------------------------------------------------------------
class StreamingMetrics:
    """AUC, log loss and calibration of (score, label) pairs in constant memory."""

    def __init__(self, bins: int = AUC_BINS):
        self.bins = bins
        self.pos = np.zeros(bins, dtype=np.int64)
        self.neg = np.zeros(bins, dtype=np.int64)
        self.rows = 0
        self.sum_prediction = 0.0
        self.sum_label = 0.0
        self.sum_logloss = 0.0

    def add(self, scores: np.ndarray, labels: np.ndarray) -> None:
        scores = np.asarray(scores, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.float64)
        idx = np.clip((scores * self.bins).astype(np.int64), 0, self.bins - 1)
        self.pos += np.bincount(idx, weights=labels, minlength=self.bins).astype(np.int64)
        self.neg += np.bincount(idx, weights=1.0 - labels, minlength=self.bins).astype(np.int64)
        p = np.clip(scores, LOGLOSS_EPSILON, 1.0 - LOGLOSS_EPSILON)
        self.sum_logloss += float(-np.sum(labels * np.log(p) + (1.0 - labels) * np.log(1.0 - p)))
        self.sum_prediction += float(scores.sum())
        self.sum_label += float(labels.sum())
        self.rows += scores.size

    def auc(self) -> Optional[float]:
        positives, negatives = int(self.pos.sum()), int(self.neg.sum())
        if not positives or not negatives:
            return None  # one class only: AUC is undefined
        neg_below = np.cumsum(self.neg) - self.neg
        num = float(np.sum(self.pos * neg_below.astype(np.float64)) + 0.5 * np.sum(self.pos * self.neg.astype(np.float64)))
        return num / (float(positives) * float(negatives))

    def result(self) -> Dict[str, Any]:
        if not self.rows:
            return {"example_count": 0}
        return {"example_count": self.rows, "auc": self.auc(),
                "logloss": self.sum_logloss / self.rows,
                "calibration": self.sum_prediction / self.sum_label if self.sum_label else None,
                "mean_prediction": self.sum_prediction / self.rows, "mean_label": self.sum_label / self.rows}


# -- predictions ------------------------------------------------------------------------------------------
def output_format(path: str, given: Optional[str] = None) -> str:
    if given:
        return given
    name = path.lower()
    if name.endswith((".tfrecord", ".tfrecord.gz", ".tfrecords", ".tfrecords.gz")):
        return "tfrecord"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    raise ScoreError(f"--output {path}: name it .csv or .tfrecord[.gz], or give --output-format")


class PredictionWriter:
    """Writes (file, line number, label, probability) rows as CSV or tf.Example TFRecords, streaming."""

    def __init__(self, path: str, fmt: str):
        self.path, self.format = path, fmt
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        self.tmp = path + ".tmp"
        if fmt == "csv":
            if path.endswith(".gz"):
                import gzip
                self._file = gzip.open(self.tmp, "wt", encoding="utf-8", newline="")
            else:
                self._file = open(self.tmp, "w", encoding="utf-8", newline="")
            self._csv = csv.writer(self._file)
            self._csv.writerow(["file", "line_number", "label", "probability"])
        else:
            import tensorflow as tf
            options = tf.io.TFRecordOptions(compression_type="GZIP" if path.endswith(".gz") else "")
            self._tf = tf
            self._file = tf.io.TFRecordWriter(self.tmp, options)

    def write(self, rows: Sequence[Tuple[str, int, Optional[int]]], scores: np.ndarray) -> None:
        if self.format == "csv":
            self._csv.writerows([f, n, "" if y is None else y, f"{float(s):.9g}"] for (f, n, y), s in zip(rows, scores))
            return
        train = self._tf.train
        for (f, n, y), s in zip(rows, scores):
            feature = {"probability": train.Feature(float_list=train.FloatList(value=[float(s)])),
                       "line_number": train.Feature(int64_list=train.Int64List(value=[n])),
                       "file": train.Feature(bytes_list=train.BytesList(value=[f.encode("utf-8")]))}
            if y is not None:
                feature["label"] = train.Feature(int64_list=train.Int64List(value=[y]))
            self._file.write(train.Example(features=train.Features(feature=feature)).SerializeToString())

    def close(self, keep: bool = True) -> None:
        self._file.close()
        if keep:
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.remove(self.tmp)


# -- the job ------------------------------------------------------------------------------------------------
def score(data: str, dataset_format: str, model_dir: str, output: Optional[str] = None,
          fmt: Optional[str] = None, model_name: str = DEFAULT_MODEL_NAME, version: Optional[int] = None,
          batch_size: int = 1024, quarantine_dir: Optional[str] = None, max_quarantine_records: int = 1000,
          progress=None) -> Dict[str, Any]:
    """Scores every good line of ``data``; returns the summary (also what the CLI writes as JSON)."""
    from components.dataset_spec import load_spec
    if batch_size < 1:
        raise ScoreError(f"--batch-size must be >= 1, got {batch_size}")
    files = data_files(os.path.abspath(data))
    spec = load_spec(dataset_format)
    fmt = output_format(output, fmt) if output else None
    chosen_version, version_dir = resolve_model(model_dir, model_name, version)
    loading = time.time()
    model = Model(chosen_version, version_dir)
    started = time.time()
    if quarantine_dir is None:
        quarantine_dir = (output + ".quarantine") if output else os.path.abspath("score-quarantine")
    quarantine = Quarantine(os.path.abspath(quarantine_dir), max_quarantine_records)
    writer = PredictionWriter(output, fmt) if output else None
    metrics = StreamingMetrics()
    counts = {"rows_read": 0, "headers_skipped": 0}
    scored = unlabeled = 0
    ok = False
    try:
        batch: List[bytes] = []
        rows: List[Tuple[str, int, Optional[int]]] = []

        def flush():
            nonlocal scored, unlabeled
            scores = model.predict(batch)
            labels = [y for _, _, y in rows]
            known = [i for i, y in enumerate(labels) if y is not None]
            if known:
                metrics.add(scores[known], np.asarray([labels[i] for i in known]))
            unlabeled += len(labels) - len(known)
            if writer:
                writer.write(rows, scores)
            scored += len(batch)
            batch.clear()
            rows.clear()
            if progress:
                progress(scored, counts["rows_read"], time.time() - started)

        for path, line_number, example, label in parsed_rows(files, spec, quarantine, counts):
            batch.append(example)
            rows.append((path, line_number, label))
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
        ok = True
    finally:
        quarantine.close()
        if writer:
            writer.close(keep=ok)
    seconds = time.time() - started
    summary = {
        "data": os.path.abspath(data), "files": len(files), "dataset_format": spec.name,
        "model": {"path": version_dir, "version": chosen_version, "signature": model.signature.name,
                  "output": model.output_name},
        "rows_read": counts["rows_read"], "rows_scored": scored, "rows_quarantined": quarantine.count,
        "headers_skipped": counts["headers_skipped"],
        "quarantined_by_reason": dict(quarantine.by_reason),
        "quarantine_records_dropped": dict(quarantine.dropped_by_reason),
        "quarantine": quarantine.path if quarantine.written else None,
        "metrics": metrics.result() if metrics.rows else None, "rows_without_label": unlabeled,
        "predictions": {"path": os.path.abspath(output), "format": fmt} if output else None,
        "seconds": round(seconds, 2), "model_load_seconds": round(started - loading, 2),
    }
    return summary


def render(summary: Dict[str, Any]) -> str:
    lines = [f"scored {summary['rows_scored']:,} rows of {summary['data']} with {summary['model']['path']} "
             f"in {summary['seconds']:.1f}s ({summary['rows_scored'] / max(summary['seconds'], 1e-3):,.0f} rows/s)"]
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(summary["quarantined_by_reason"].items())) or "none"
    lines.append(f"  rows: read {summary['rows_read']:,}, scored {summary['rows_scored']:,}, "
                 f"quarantined {summary['rows_quarantined']:,} ({reasons})")
    if summary.get("quarantine"):
        lines.append(f"  quarantine: {summary['quarantine']}")
    m = summary.get("metrics")
    if m and m.get("example_count"):
        auc = "n/a (one class only)" if m.get("auc") is None else f"{m['auc']:.4f}"
        calibration = "n/a" if m.get("calibration") is None else f"{m['calibration']:.4f}"
        lines.append(f"  labels: auc {auc}, logloss {m['logloss']:.4f}, calibration {calibration} "
                     f"(mean prediction {m['mean_prediction']:.4f}, mean label {m['mean_label']:.4f}, "
                     f"{m['example_count']:,} rows)")
    if summary.get("predictions"):
        lines.append(f"  predictions: {summary['predictions']['path']} ({summary['predictions']['format']})")
    return "\n".join(lines)


def add_command(sub) -> None:
    p = sub.add_parser("score", help="score click-log files with a pushed model (batch inference)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a click-log file or a folder of them")
    p.add_argument("--format", dest="dataset_format", default="criteo",
                   help="criteo | criteo-kaggle | avazu | path/to/spec.yaml (default: criteo)")
    p.add_argument("--model", required=True, metavar="SERVING_DIR",
                   help="serving base dir, <serving dir>/<model name>, or a version folder")
    p.add_argument("--model-name", default=DEFAULT_MODEL_NAME,
                   help=f"model folder under a serving base dir (default {DEFAULT_MODEL_NAME})")
    p.add_argument("--version", type=int, help="model version (default: the newest, as TF Serving picks)")
    p.add_argument("--output", help="predictions file: .csv or .tfrecord (.gz compresses); none: metrics only")
    p.add_argument("--output-format", choices=OUTPUT_FORMATS, help="instead of the --output extension")
    p.add_argument("--batch-size", type=int, default=1024, help="rows per model call (default 1024)")
    p.add_argument("--quarantine", metavar="DIR", help="bad-line records (default <output>.quarantine)")
    p.add_argument("--max-quarantine-records", type=int, default=1000,
                   help="records kept per (reason, file); every bad line is counted (default 1000)")
    p.add_argument("--max-bad-fraction", type=float, default=0.01,
                   help="exit 1 when more than this fraction of the lines is bad (default 0.01)")
    p.add_argument("--summary", help="summary JSON path (default <output>.summary.json when --output is given)")
    p.add_argument("--verbose", action="store_true", help="library logs and tracebacks")
    p.set_defaults(func=cmd_score)


def cmd_score(args) -> int:
    from pipelines.progress import Display
    from serving.quiet import quiet_logs
    quiet_logs(args.verbose)
    if not 0.0 <= args.max_bad_fraction <= 1.0:
        raise ScoreError(f"--max-bad-fraction must be in [0, 1], got {args.max_bad_fraction}")
    displays: List[Display] = []

    def progress(scored, read, seconds):
        if not displays:  # from the first batch on: the model's load is not scoring time
            displays.append(Display(started=time.time() - seconds))
        displays[0].status(f"scoring: {scored:,} rows scored of {read:,} read "
                           f"({scored / max(seconds, 1e-9):,.0f} rows/s)")
    try:
        summary = score(args.data, args.dataset_format, args.model, args.output, args.output_format,
                        args.model_name, args.version, args.batch_size, args.quarantine,
                        args.max_quarantine_records, progress=progress)
    finally:
        for display in displays:
            display.end_status()
    summary_path = args.summary or (args.output + ".summary.json" if args.output else None)
    if summary_path:
        with open(summary_path, "w") as f:
            json.dump(summary, f, indent=1, sort_keys=True)
    print(render(summary))
    if summary_path:
        print(f"  summary: {summary_path}")
    bad = summary["rows_quarantined"]
    if summary["rows_read"] and bad / summary["rows_read"] > args.max_bad_fraction:
        print(f"error: {bad} of {summary['rows_read']} lines ({bad / summary['rows_read']:.2%}) are bad, more than "
              f"--max-bad-fraction {args.max_bad_fraction}; see {summary.get('quarantine') or 'the counts above'}",
              file=sys.stderr)
        return 1
    if not summary["rows_scored"]:
        print("error: no line could be scored", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:  # python -m pipelines.score
    from pipelines import cli
    return cli.main(["score"] + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
