"""The defaults of the push path, in one place: what the ServingCheck and the Pusher export, check and
publish, and the ServingCheck's limits.

Read by both components (their arguments), their executors (a missing exec property), the pruning
code and pipelines/config.py (``serving:`` and ``serving_check:``), so no default is written twice.
No TensorFlow here: reading a config needs none.
"""
from serving import DEFAULT_MODEL_NAME

MODEL_NAME = DEFAULT_MODEL_NAME
KEEP_VERSIONS = 3  # the newest versions kept in the serving folder (and any pinned one)
EXAMPLES_SPLIT = "eval"  # the split whose rows are the parity rows, warmup requests and the sample
PARITY_TOLERANCE = 1e-6  # max |probability of the pruned - of the trained model|
PARITY_EXAMPLES = 1000
WARMUP_REQUESTS = 1000  # TF Serving reads at most 1000
# A compact table adds its two gathers to every traced signature of the SavedModel (a few KB per table
# in saved_model.pb): tables whose dropped rows weigh less than this stay whole (config:
# serving.min_compact_bytes; the same name as the components' argument).
MIN_COMPACT_BYTES = 8192
LOCK_TIMEOUT_SECONDS = 600  # how long a push waits for another push of the same model

# The ServingCheck's limits (config: serving_check).
SAMPLE_ROWS = 200
MAX_LOAD_SECONDS = 60.0
MAX_PEAK_RSS_MB = 2048.0
MAX_P99_LATENCY_MS = 1000.0
MAX_SCORE_DIFF = 1e-5
STARTUP_TIMEOUT_SECONDS = 180.0
