"""sparsectr serving package."""
import os

# Keras 2 (tf_keras) for TFT/TFMA; must be set before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# The TF Serving model name of the pushed CTR model, once for the whole project: the serving process,
# the clients, the Pusher and ServingCheck and the pipeline config (serving.model_name) default to it.
DEFAULT_MODEL_NAME = "ctr"
