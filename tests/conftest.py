import logging
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# requirements-test.lock's packages (scripts/setup_env.sh): on the tests' path only, not the venv's.
sys.path.append(os.path.join(REPO_ROOT, ".test-deps"))
SHARED_DATA = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")


def write_sigmoid_model(path: str, feature: str) -> None:
    """A SavedModel whose serving_default takes serialized tf.Examples, as the pushed models do, and
    returns sigmoid(`feature`) as the click probability."""
    import tensorflow as tf

    class Model(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            parsed = tf.io.parse_example(examples, {feature: tf.io.FixedLenFeature([1], tf.float32)})
            return {"probability": tf.sigmoid(parsed[feature])}

    model = Model()
    tf.saved_model.save(model, path, signatures={"serving_default": model.serve})


@pytest.fixture
def shared_data():
    """Path of ../shared/data (real click-log samples); tests skip when it is absent."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"real click-log samples not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _logging_filters_restored():
    """A CLI run in-process (``main([...])``) puts its quiet filters on the root logger's handlers,
    pytest's persistent capture handlers among them, and its progress filter on absl's logger: without
    this, every later test's ``caplog`` would miss INFO records."""
    loggers = [logging.getLogger(), logging.getLogger("absl")]
    before = {id(f): list(f.filters) for f in loggers + list(logging.getLogger().handlers)}
    yield
    for filterer in loggers + list(logging.getLogger().handlers):
        if id(filterer) in before:
            filterer.filters[:] = before[id(filterer)]


@pytest.fixture(autouse=True)
def _environment_restored():
    """An entry point's main() run in-process may set environment variables for its own process
    (benchmarks quiet TensorFlow's C++ log): they must not reach later tests' subprocesses."""
    before = dict(os.environ)
    yield
    if os.environ != before:
        os.environ.clear()
        os.environ.update(before)
