"""components/beam_dependencies.py: TFX's sdist only where a Beam worker would install it."""
import os
import tempfile
import threading

from tfx.utils import dependency_utils

from components.beam_dependencies import NoSdistOnDirectRunner, without_sdist_on_direct_runner
from components.fast_statistics import Executor as StatisticsGenExecutor
from pipelines.config import BEAM_PRESETS
from pipelines.local_runner import run_scratch


def _beam_args(executor_class, beam_args, tmp_dir=None):
    """The Beam args the executor ends up with, constructed as TFX's launchers and entrypoint do."""
    context = executor_class.Context(beam_pipeline_args=list(beam_args), tmp_dir=tmp_dir or tempfile.mkdtemp())
    return executor_class(context)._beam_pipeline_args


def _sdists(args):
    return [a.split("=", 1)[1] for a in args if a.startswith("--extra_package=")]


def test_no_sdist_on_a_direct_runner_and_tfxs_sdist_on_any_other(tmp_path):
    original = dependency_utils.make_beam_dependency_flags
    with run_scratch(str(tmp_path / "out")) as scratch:
        for preset in ("inmemory", "multiprocessing"):
            args = _beam_args(StatisticsGenExecutor, BEAM_PRESETS[preset], str(tmp_path))
            assert not _sdists(args), args
            assert set(BEAM_PRESETS[preset]) <= set(args)
        assert os.listdir(scratch) == []  # no copy of TFX, no sdist
        # Another runner's workers install TFX from the sdist: TFX still builds it (~3-5 s).
        sdists = _sdists(_beam_args(StatisticsGenExecutor, ["--runner=PortableRunner", "--job_endpoint=localhost:1"],
                                     str(tmp_path)))
        assert len(sdists) == 1 and sdists[0].startswith(scratch) and os.path.exists(sdists[0])
    assert dependency_utils.make_beam_dependency_flags is original
    assert not _sdists(_beam_args(StatisticsGenExecutor, []))  # no Beam args: TFX adds nothing either way


def test_concurrent_constructions_leave_tfx_as_it_was():
    original = dependency_utils.make_beam_dependency_flags
    errors = []

    def construct():
        try:
            for _ in range(5):
                assert not _sdists(_beam_args(StatisticsGenExecutor, BEAM_PRESETS["inmemory"]))
        except BaseException as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=construct) for _ in range(4)]
    for t in threads:
        t.start()
    with without_sdist_on_direct_runner():  # nested with the threads' patches
        assert dependency_utils.make_beam_dependency_flags(["--runner=DirectRunner"]) == ["--runner=DirectRunner"]
    for t in threads:
        t.join()
    assert not errors
    assert dependency_utils.make_beam_dependency_flags is original


def test_the_mixin_comes_before_the_tfx_executor():
    assert StatisticsGenExecutor.__mro__.index(NoSdistOnDirectRunner) == 1
