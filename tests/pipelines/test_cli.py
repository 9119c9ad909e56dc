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
