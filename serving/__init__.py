"""sparsectr serving package."""
import os

# Keras 2 (tf_keras) for TFT/TFMA; must be set before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
