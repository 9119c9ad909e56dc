"""The environment contract: Python 3.10, the locked TFX 1.16 stack, and Keras 2 everywhere."""
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_python_310_and_locked_stack():
    assert sys.version_info[:2] == (3, 10)
    import importlib.metadata as md
    pins = {}
    with open(os.path.join(REPO_ROOT, "requirements.lock")) as f:
        for line in f:
            if "==" in line and not line.startswith("#"):
                name, version = line.split()[0].split("==")  # "name==version --hash=sha256:..."
                pins[name.lower().replace("_", "-")] = version
    for name in ("tfx", "tensorflow", "tf-keras", "tensorflow-transform", "tensorflow-model-analysis",
                 "apache-beam", "kfp", "protobuf", "pyarrow", "numpy"):
        assert md.version(name) == pins[name], name


def test_tf_keras_is_keras_2_in_this_process():
    assert os.environ.get("TF_USE_LEGACY_KERAS") == "1"
    import tensorflow as tf
    import tf_keras
    assert tf_keras.__version__.startswith("2."), tf_keras.__version__
    # tf.keras resolves to tf_keras (Keras 2), not Keras 3.
    assert tf.keras.layers.Dense is tf_keras.layers.Dense
    assert tf.keras.layers.Dense.__module__.startswith("tf_keras")


def test_project_packages_select_keras_2_even_without_the_variable():
    # A process started without the Makefile's environment (e.g. a Beam worker or a user's script)
    # still gets Keras 2 once it imports a project package before TensorFlow.
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["PYTHONPATH"] = REPO_ROOT
    code = "import pipelines, tensorflow as tf; print(tf.keras.layers.Dense.__module__)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith("tf_keras."), out.stdout + out.stderr
