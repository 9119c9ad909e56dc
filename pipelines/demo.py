"""Score a few click-log lines against the pushed model through the serving clients.

    python -m pipelines.demo --data output/generated/<file> --rows 5          # starts a local server
    python -m pipelines.demo --data FILE --rest-url http://127.0.0.1:8501 \
                             --grpc-target 127.0.0.1:8500                     # a running one (make serve)

Lines are parsed by ExampleGen's own parser (``components/click_log_example_gen/parsing.py``) into
the serialized tf.Examples that ``serving_default`` takes, and scored over REST and gRPC; the two
answers must agree. ``score_lines`` is the function the pipeline's demo calls.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

from serving import DEFAULT_MODEL_NAME


def examples_from_lines(lines: Sequence[str], dataset_format: str = "criteo", max_rows: Optional[int] = None):
    """(serialized tf.Examples, labels) of the lines ExampleGen would accept (others are skipped),
    at most ``max_rows``."""
    from components.click_log_example_gen.line_parser import LineParser, ParsedRow
    from components.dataset_spec import load_spec

    spec = load_spec(dataset_format)
    parser = LineParser(spec)
    examples, labels = [], []
    for line in lines:
        text = line.rstrip("\r\n")
        if spec.header and parser.is_header(text):
            continue
        parsed = parser.parse(text)
        if isinstance(parsed, ParsedRow) and (max_rows is None or len(examples) < max_rows):
            examples.append(parsed.example)
            fields = text.split(spec.delimiter)
            labels.append(fields[[c.name for c in spec.file_columns].index(spec.label)].strip())
    return examples, labels


def score_examples(examples: Sequence[bytes], rest_url: str, grpc_target: str,
                   model_name: str = DEFAULT_MODEL_NAME) -> Dict:
    from serving.grpc_client import GrpcClient
    from serving.rest_client import RestClient

    with RestClient(rest_url, model_name) as rest, GrpcClient(grpc_target, model_name) as grpc_client:
        rest_scores = rest.predict_examples(examples)
        grpc_scores = grpc_client.predict_examples(examples)
        version = grpc_client.last_model_version
    worst = max((abs(a - b) for a, b in zip(rest_scores, grpc_scores)), default=0.0)
    if worst > 1e-5:
        raise RuntimeError(f"REST and gRPC scores differ by {worst:.3g}")
    return {"model_version": version, "rest": rest_scores, "grpc": grpc_scores}


def score_lines(serving_dir: str, lines: Sequence[str], dataset_format: str = "criteo",
                model_name: str = DEFAULT_MODEL_NAME, max_rows: Optional[int] = None) -> Dict:
    """Start a local server on free 127.0.0.1 ports over ``serving_dir``, score ``lines``, stop it."""
    from serving.local_server.server import LocalServer

    examples, labels = examples_from_lines(lines, dataset_format, max_rows)
    if not examples:
        raise ValueError(f"none of the {len(lines)} lines parses as a {dataset_format} row")
    with LocalServer(serving_dir, model_name, rest_port=0, grpc_port=0) as server:
        if not server.repository.poll_once():
            raise ValueError(f"no model version under {os.path.join(serving_dir, model_name)}; run `make demo` first")
        result = score_examples(examples, server.rest_url, server.grpc_target, model_name)
    result["labels"] = labels
    return result


def main(argv: Optional[List[str]] = None) -> int:
    from pipelines.config import PipelineConfig

    parser = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a click-log file")
    parser.add_argument("--format", dest="dataset_format", default="criteo")
    parser.add_argument("--rows", type=int, default=5)
    parser.add_argument("--base", default=PipelineConfig().serving_dir, help="serving base directory")
    parser.add_argument("--model-name", default=PipelineConfig().serving.model_name)
    parser.add_argument("--rest-url", help="score through this running server instead of starting one")
    parser.add_argument("--grpc-target", help="with --rest-url: the same server's gRPC host:port")
    args = parser.parse_args(argv)
    try:
        with open(args.data, encoding="utf-8", errors="replace") as f:
            lines = list(itertools.islice(f, args.rows + 1))
        if args.rest_url:
            if not args.grpc_target:
                raise ValueError("--rest-url needs --grpc-target too")
            examples, labels = examples_from_lines(lines, args.dataset_format, args.rows)
            result = dict(score_examples(examples, args.rest_url, args.grpc_target, args.model_name), labels=labels)
        else:
            result = score_lines(args.base, lines, args.dataset_format, args.model_name, args.rows)
    except (OSError, ValueError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    for i, (score, label) in enumerate(zip(result["rest"], result["labels"])):
        print(f"row {i}: click probability {score:.4f} (label {label})")
    print(json.dumps({"model_version": result["model_version"], "rows": len(result["rest"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
