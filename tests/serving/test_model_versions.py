"""serving/model_versions.py: the one rule of a complete version and the one SavedModel copy helper."""
import os

from serving import model_versions


def _version(root, name, pb=True):
    path = root / name
    (path / "variables").mkdir(parents=True)
    if pb:
        (path / "saved_model.pb").write_bytes(b"pb")
    return path


def test_complete_versions_are_int64_folders_with_saved_model_pb(tmp_path):
    assert model_versions.versions(str(tmp_path / "missing")) == []
    for name in ("7", "12", "0300"):
        _version(tmp_path, name)
    _version(tmp_path, "30", pb=False)  # still being written
    _version(tmp_path, ".tmp-40")  # a push in flight
    _version(tmp_path, str(1 << 63))  # not an int64
    assert model_versions.versions(str(tmp_path)) == [7, 12, 300]
    assert model_versions.versions(str(tmp_path), complete=False) == [7, 12, 30, 300]
    assert model_versions.latest_version_dir(str(tmp_path)) == os.path.join(str(tmp_path), "300")
    assert model_versions.is_version_name("9223372036854775807") and not model_versions.is_version_name("-1")


def test_copy_tree_writes_saved_model_pb_last(tmp_path, monkeypatch):
    import tensorflow as tf
    source = _version(tmp_path / "src", "1")
    (source / "variables" / "variables.index").write_bytes(b"index")
    (source / "assets").mkdir()
    (source / "assets" / "vocab").write_bytes(b"v")
    copied = []
    real_copy = tf.io.gfile.copy
    monkeypatch.setattr(tf.io.gfile, "copy", lambda src, dst, overwrite=False: (
        copied.append(os.path.relpath(src, source)), real_copy(src, dst, overwrite))[-1])
    model_versions.copy_tree(str(source), str(tmp_path / "dst"))
    assert copied[-1] == "saved_model.pb" and sorted(copied) == ["assets/vocab", "saved_model.pb",
                                                                 "variables/variables.index"]
    assert model_versions.manifest(str(tmp_path / "dst")) == model_versions.manifest(str(source))
