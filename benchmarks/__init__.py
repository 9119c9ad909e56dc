"""sparsectr benchmarks: ``python -m benchmarks.<name>``; committed results in benchmarks/results/."""
import os

# Keras 2 (tf_keras) for TFT/TFMA; must be set before TensorFlow is first imported. Set here, once
# for every benchmark process (each runs as ``python -m benchmarks.<name>``), as the other packages do.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
