"""benchmarks/trainer_export_bench.py: its input lookup and its summary."""
import pytest

from benchmarks import trainer_export_bench as bench


def test_a_folder_without_a_trainer_run_is_one_clear_error(tmp_path):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(tmp_path / "metadata.sqlite")
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    metadata_store.MetadataStore(config)
    with pytest.raises(SystemExit, match="no Trainer execution"):
        bench.trainer_inputs(str(tmp_path))


def test_a_folder_that_is_not_a_run_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no metadata.sqlite"):
        bench.trainer_inputs(str(tmp_path / "missing"))
    assert not (tmp_path / "missing").exists()


def test_summary_compares_the_medians():
    row = {"do_s": 10.0, "fit_s": 5.0, "saved_model_bytes": 1000.0}
    record = {"machine": "m", "run": "r", "load_before": [0], "load_after": [0], "repeats": 1,
              "median": {"current": dict(row, export_s=2.0), "previous": dict(row, export_s=8.0)},
              "scored_examples": 5, "max_score_difference": 0.0}
    assert "export: 4.00x faster (6.0 s less)" in bench.text(record)
