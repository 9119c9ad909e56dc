"""The CLI's contract for bad input: non-zero exit, one line naming the path, no traceback."""
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_USE_LEGACY_KERAS="1")
    return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(proc, must_contain):
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert err[0].startswith("error: ") and must_contain in err[0], err[0]


def test_missing_data_path(tmp_path):
    missing = str(tmp_path / "nope")
    assert_one_line_error(run_cli("run", "--data", missing, "--output", str(tmp_path / "o")), missing)


def test_empty_data_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("run", "--data", str(empty), "--output", str(tmp_path / "o")), str(empty))


def test_data_path_is_a_file(tmp_path):
    f = tmp_path / "clicks.tsv"
    f.write_text("0\t1\n")
    assert_one_line_error(run_cli("run", "--data", str(f), "--output", str(tmp_path / "o")), str(f))


def test_unreadable_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "ok.tsv").write_text("0\t1\n")
    # A dangling link is unreadable even for root (chmod 000 is not, when tests run as root).
    os.symlink(tmp_path / "gone.tsv", data / "broken.tsv")
    proc = run_cli("run", "--data", str(data), "--output", str(tmp_path / "o"))
    assert_one_line_error(proc, str(data / "broken.tsv"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_file_without_read_permission(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    f = data / "secret.tsv"
    f.write_text("0\t1\n")
    f.chmod(0)
    assert_one_line_error(run_cli("run", "--data", str(data), "--output", str(tmp_path / "o")), str(f))


def test_unknown_format(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.tsv").write_text("0\t1\n")
    proc = run_cli("run", "--data", str(data), "--format", "nosuch", "--output", str(tmp_path / "o"))
    assert_one_line_error(proc, "nosuch")


def test_bad_rows_option(tmp_path):
    proc = run_cli("run", "--rows", "0", "--output", str(tmp_path / "o"))
    assert_one_line_error(proc, "--rows")


def test_bad_span_window_option(tmp_path):
    proc = run_cli("run", "--span-window", "0", "--output", str(tmp_path / "o"))
    assert_one_line_error(proc, "--span-window")


def test_help_lists_subcommands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for sub in ("run", "generate"):
        assert sub in proc.stdout


@pytest.fixture
def nothing_runs(monkeypatch):
    """Fails the test if the run gets as far as generating data or starting the pipeline."""
    from pipelines import generator, local_runner

    def fail(*args, **kwargs):
        raise AssertionError("a bad config reached the pipeline")
    monkeypatch.setattr(local_runner, "run", fail)
    monkeypatch.setattr(local_runner, "prepare_data", fail)
    monkeypatch.setattr(generator, "generate", fail)


def assert_main_fails_in_one_line(capsys, argv, must_contain):
    from pipelines import cli
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("error: ") and must_contain in err, err


@pytest.mark.parametrize("option,value,must_contain", [
    ("--l21", "-1", "--l21 (trainer.l21): must be a finite number >= 0, got -1.0"),
    ("--l21", "nan", "--l21 (trainer.l21): must be a finite number >= 0, got nan"),
    ("--epochs", "0", "--epochs (trainer.epochs): must be an integer >= 1, got 0"),
    ("--rows", "1000000000000", "--rows (data.generated_rows)"),
    ("--epochs", "four", "--epochs: invalid int value"),
    ("--model", "lstm", "--model: invalid choice"),
])
def test_bad_run_options_fail_before_anything_runs(tmp_path, capsys, nothing_runs, option, value, must_contain):
    assert_main_fails_in_one_line(capsys, ["run", option, value, "--output", str(tmp_path / "o")], must_contain)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text,must_contain", [
    ("trainer:\n  epochs: four\n", "trainer.epochs: must be an integer >= 1, got 'four'"),
    ("data:\n  max_bad_fraction: 5\n", "data.max_bad_fraction: must be a finite number in [0, 1], got 5"),
    ("serving:\n  keep_versions: 0\n", "serving.keep_versions: must be an integer >= 1, got 0"),
    ("serving:\n  model_name: ..\n", "serving.model_name: must be a name"),
    ("gates:\n  min_auc: -1\n", "gates.min_auc: must be a finite number in [0, 1], got -1"),
    ("data:\n  eval_split_buckets: 10\n", "data.eval_split_buckets: must be an integer in [1, 9], got 10"),
    ("- trainer\n- data\n", "must be a mapping of config keys, got list"),
    ("trainer: {epochs: 2\n", "not a valid config file"),
    ("trainer: !!python/object/apply:os.system [echo hi]\n", "could not determine a constructor for the tag"),
])
def test_bad_config_files_fail_before_anything_runs(tmp_path, capsys, nothing_runs, text, must_contain):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert_main_fails_in_one_line(capsys, ["run", "--config", str(path), "--output", str(tmp_path / "o")], must_contain)


def test_missing_config_file(tmp_path, capsys, nothing_runs):
    missing = str(tmp_path / "nope.yaml")
    assert_main_fails_in_one_line(capsys, ["run", "--config", missing], f"{missing}: cannot read the config file")


def test_impossible_sizes_are_one_line_errors(tmp_path):
    # Neither command draws a row: `run` caps data.generated_rows, `generate` checks the free disk.
    assert_one_line_error(run_cli("run", "--rows", "1000000000000", "--output", str(tmp_path / "o")),
                          "--rows (data.generated_rows): must be an integer in [1, 100000000]")
    assert_one_line_error(run_cli("generate", "--out", str(tmp_path / "g"), "--rows", "1000000000000"), "GB free")
    assert not (tmp_path / "o").exists() and not (tmp_path / "g").exists()
