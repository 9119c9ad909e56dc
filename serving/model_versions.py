"""What a model version on disk is: the one rule for every reader and writer of a serving directory.

TF Serving loads ``<base>/<model_name>/<version>/`` where ``<version>`` is all ASCII digits and an
int64; a version is complete (loadable) once its ``saved_model.pb`` is there -- the Pusher copies
that file last, so a reader that waits for it never sees a model whose variables are still being
written. Leaf module: no TensorFlow, no other package of the project.
"""
from __future__ import annotations

import re

SAVED_MODEL_PB = "saved_model.pb"
INT64_MAX = (1 << 63) - 1
_DIGITS = re.compile(r"^[0-9]+$")


def is_version_name(name: str) -> bool:
    """Whether `name` (a directory name or a path component of a request) is a TF Serving version."""
    return bool(_DIGITS.match(name)) and len(name) <= 19 and int(name) <= INT64_MAX
