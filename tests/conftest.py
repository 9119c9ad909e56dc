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
