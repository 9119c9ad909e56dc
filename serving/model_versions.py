"""What a model version on disk is: the one rule for every reader and writer of a serving directory.

TF Serving loads ``<base>/<model_name>/<version>/`` where ``<version>`` is all ASCII digits and an
int64. A version is complete once its ``saved_model.pb`` is there: the Pusher writes that file last
(``copy_tree`` here; locally it also renames the whole folder into place), so a reader that waits
for it never sees a model whose variables are still being written. Readers: the local server's
repository, LatestPushedModel (the baseline and warm-start source), batch scoring, the local runner
and the serving benchmark; the Pusher numbers and retires versions by ``is_version_name``.

Functions take ``fs``: the local filesystem by default, ``tf.io.gfile`` for object stores (gs://,
s3://). No TensorFlow at import time (``copy_tree`` and ``manifest`` import it when called).
"""
from __future__ import annotations

import os
import re
from typing import Dict, Iterable, List, Optional

SAVED_MODEL_PB = "saved_model.pb"
INT64_MAX = (1 << 63) - 1
_DIGITS = re.compile(r"^[0-9]+$")


class _LocalFileSystem:
    """The three calls of ``tf.io.gfile`` used here, on the local filesystem."""
    listdir = staticmethod(os.listdir)
    exists = staticmethod(os.path.exists)
    isdir = staticmethod(os.path.isdir)


LOCAL = _LocalFileSystem()


def is_version_name(name: str) -> bool:
    """Whether `name` (a directory name or a path component of a request) is a TF Serving version."""
    return bool(_DIGITS.match(name)) and len(name) <= 19 and int(name) <= INT64_MAX


def is_complete(version_dir: str, fs=LOCAL) -> bool:
    """Whether the version folder holds its ``saved_model.pb`` (written last by every push)."""
    return bool(fs.exists(os.path.join(version_dir, SAVED_MODEL_PB)))


def versions(model_dir: str, fs=LOCAL, complete: bool = True) -> List[int]:
    """The version numbers under `model_dir`, ascending: the complete ones, or (``complete=False``)
    every numbered folder, as a pusher counts them."""
    if not fs.isdir(model_dir):
        return []
    try:
        names = [name.rstrip("/") for name in fs.listdir(model_dir)]
    except FileNotFoundError:  # removed since the check
        return []
    return sorted(int(name) for name in names if is_version_name(name)
                  and (not complete or is_complete(os.path.join(model_dir, name), fs)))


def latest_version_dir(model_dir: str, fs=LOCAL) -> Optional[str]:
    """The newest complete version's folder, as TF Serving's default policy picks it; None if none."""
    found = versions(model_dir, fs)
    return os.path.join(model_dir, str(found[-1])) if found else None


# -- copying a SavedModel folder (any tf.io.gfile filesystem) ---------------------------------------
def manifest(root: str) -> Dict[str, int]:
    """{path relative to `root`: size in bytes} of every file under `root` (any tf.io.gfile filesystem)."""
    import tensorflow as tf
    root = root.rstrip("/")
    files = {}
    for directory, _, names in tf.io.gfile.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            files[os.path.relpath(path, root)] = tf.io.gfile.stat(path).length
    return files


def saved_model_pb_last(names: Iterable[str]) -> List[str]:
    """`names` sorted, ``saved_model.pb`` last: readers that wait for it (TF Serving, TFX, the rule
    above) then never see a model whose variables are still being written."""
    names = sorted(names)
    return [n for n in names if n != SAVED_MODEL_PB] + [n for n in names if n == SAVED_MODEL_PB]


def copy_files(src: str, dst: str, names: Iterable[str]) -> None:
    """Copy the files `names` (relative paths) from `src` to `dst`, in that order."""
    import tensorflow as tf
    for name in names:
        target = os.path.join(dst, name)
        tf.io.gfile.makedirs(os.path.dirname(target))
        tf.io.gfile.copy(os.path.join(src, name), target, overwrite=True)


def copy_tree(src: str, dst: str) -> None:
    """Copy a SavedModel folder (any tf.io.gfile filesystems) with ``saved_model.pb`` last."""
    copy_files(src, dst, saved_model_pb_last(manifest(src)))
