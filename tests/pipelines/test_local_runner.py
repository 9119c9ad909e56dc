"""Generated data behaves like a daily schedule: span 0 first, the next span once a model is pushed."""
import os

from pipelines.config import load_config
from pipelines.local_runner import GENERATED_PATTERN, prepare_data


def _config(tmp_path, rows=300):
    return load_config(overrides={"output_dir": str(tmp_path), "data": {"generated_rows": rows}})


def _files(data_dir):
    return sorted(os.listdir(data_dir))


def test_generated_data_is_the_next_span_once_a_model_was_pushed(tmp_path):
    config = _config(tmp_path)
    data_dir, _, truth = prepare_data(config)
    assert _files(data_dir) == ["clicks-00000.tsv"] and truth["rows"] == 300 and 0.5 < truth["bayes_auc"] < 1
    assert config.data.input_pattern == GENERATED_PATTERN and config.data.span_window == 1
    first = open(os.path.join(data_dir, "clicks-00000.tsv")).read()

    # No model pushed yet (a failed or interrupted run): the same day again, not regenerated.
    again = _config(tmp_path)
    assert prepare_data(again)[0] == data_dir and _files(data_dir) == ["clicks-00000.tsv"]
    assert open(os.path.join(data_dir, "clicks-00000.tsv")).read() == first

    version = tmp_path / "serving" / "ctr" / "1700000000"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    _, _, next_truth = prepare_data(_config(tmp_path))
    assert _files(data_dir) == ["clicks-00000.tsv", "clicks-00001.tsv"]
    assert open(os.path.join(data_dir, "clicks-00001.tsv")).read() != first
    assert next_truth["bayes_auc"] != truth["bayes_auc"]  # that day's own rows
    prepare_data(_config(tmp_path))
    assert _files(data_dir)[-1] == "clicks-00002.tsv"

    # Another row count starts over at span 0.
    prepare_data(_config(tmp_path, rows=200))
    assert _files(data_dir) == ["clicks-00000.tsv"]
    assert sum(1 for _ in open(os.path.join(data_dir, "clicks-00000.tsv"))) == 200


def test_run_scratch_is_the_temp_folder_of_the_run_and_its_subprocesses_then_goes(tmp_path, monkeypatch):
    import subprocess
    import sys
    import tempfile

    from pipelines.local_runner import run_scratch
    monkeypatch.setenv("TMPDIR", str(tmp_path / "outer"))
    before = tempfile.tempdir
    with run_scratch(str(tmp_path / "out")) as scratch:
        assert os.path.dirname(scratch) == str(tmp_path / "out" / ".scratch")
        assert os.path.dirname(tempfile.mkdtemp()) == scratch
        child = subprocess.run([sys.executable, "-c", "import tempfile; print(tempfile.mkdtemp())"],
                               capture_output=True, text=True, check=True).stdout.strip()
        assert os.path.dirname(child) == scratch  # Beam's worker processes inherit it
    assert not os.path.exists(scratch) and os.listdir(tmp_path / "out" / ".scratch") == []
    assert os.environ["TMPDIR"] == str(tmp_path / "outer") and tempfile.tempdir == before


def test_run_scratch_removes_what_a_killed_run_left_and_keeps_a_running_ones(tmp_path):
    import subprocess
    import sys

    from pipelines.local_runner import run_scratch
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    scratch = tmp_path / "out" / ".scratch"
    (scratch / f"run-{dead}-abc" / "build").mkdir(parents=True)
    (scratch / f"run-{os.getppid()}-def").mkdir()  # a live process's run
    with run_scratch(str(tmp_path / "out")):
        pass
    assert sorted(os.listdir(scratch)) == [f"run-{os.getppid()}-def"]
