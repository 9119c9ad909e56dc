import logging
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")


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
