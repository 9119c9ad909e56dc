"""Every default of the serving process, in one place (LocalServer's arguments and the CLI's options)."""
from serving import DEFAULT_MODEL_NAME  # noqa: F401 -- the project's one model name

DEFAULT_HOST = "127.0.0.1"  # 0.0.0.0 serves other machines
DEFAULT_REST_PORT = 8501  # TF Serving's ports
DEFAULT_GRPC_PORT = 8500
DEFAULT_NUM_VERSIONS = 1  # TF Serving's default "latest" policy: the newest version only
DEFAULT_POLL_SECONDS = 2.0
DEFAULT_RETRY_FAILED_SECONDS = 30.0

DEFAULT_MAX_BATCH_SIZE = 1024
DEFAULT_MAX_BODY_BYTES = 8 << 20
DEFAULT_MAX_IN_FLIGHT = 64
# Bodies held at once, all requests together: four at the size limit. A JSON body takes ~12x its size
# in Python objects while it is parsed, so this bounds that memory to a few hundred MB.
DEFAULT_MAX_IN_FLIGHT_BYTES = 4 * DEFAULT_MAX_BODY_BYTES
DEFAULT_QUEUE_TIMEOUT_S = 2.0
DEFAULT_SOCKET_TIMEOUT_S = 15.0
