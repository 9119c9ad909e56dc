"""A local stand-in for TF Serving: the model's versions under a serving base directory, served with
the real TF runtime over TF Serving's REST and gRPC APIs.

    python -m serving.local_server --base output/serving [--model-name ctr]
                                   [--rest-port 8501] [--grpc-port 8500]
    python -m pipelines serve [--config FILE]       # `make serve`: --base and --model-name from the config

It loads ``<base>/<model-name>/<version>/`` with ``tf.saved_model.load``, polls for new versions and
serves the newest ``--num-versions`` (TF Serving's default "latest" policy), and answers:

* REST: ``POST /v1/models/<name>[/versions/<v>]:predict`` (``instances`` rows or ``inputs``
  columns, ``signature_name``; answers ``predictions`` / ``outputs``; bytes as ``{"b64": ...}``),
  ``GET /v1/models/<name>[/versions/<v>]`` (status), ``GET .../metadata``, and Prometheus metrics
  at ``/monitoring/prometheus/metrics``.
* gRPC: ``tensorflow.serving.PredictionService/Predict`` and ``GetModelMetadata``, and
  ``ModelService/GetModelStatus``, with TF Serving's request/response protos.

Bad requests (malformed JSON or tf.Example, unknown or mistyped features, ragged or oversized
batches, a version that is not an int64) get HTTP 4xx with ``{"error": "..."}`` or gRPC
INVALID_ARGUMENT and one log line; nothing a client sends stops the server. Before a first version is
loaded, predict answers HTTP 503 / gRPC UNAVAILABLE, which the clients retry.

What one client can take is bounded: a body over ``--max-body-bytes`` is refused (413) from its
Content-Length without being read; request bodies held at once are bounded in bytes and predictions
run at once in number (``--max-in-flight``); a request that finds no room within
``--queue-timeout-s`` gets HTTP 503 / gRPC RESOURCE_EXHAUSTED; a connection that sends nothing for
``--socket-timeout-s`` is closed. A version that failed to load is retried every
``--retry-failed-seconds`` (its files may still have been arriving).

A package of small modules, each one part of the server: ``errors`` (the one error -> status table
both APIs answer with), ``repository`` (the versions on disk, loaded), ``limits`` (admission),
``metrics``, ``rest``, ``grpc_api``, ``server`` (``LocalServer``: both APIs on one repository),
``defaults`` (every default of the process) and ``cli``. It is a leaf: it reads no pipeline config (``pipelines/serve.py`` does, for ``make serve``).
"""
import sys

# Quiet unless --verbose (serving/quiet.py): TF's C++ start-up lines and known-harmless warnings, set
# here, before any module of the server imports TensorFlow.
from serving.quiet import quiet_process

quiet_process(verbose="--verbose" in sys.argv[1:])
