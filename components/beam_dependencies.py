"""TFX's ``tfx_ephemeral`` sdist, skipped where no Beam worker would read it.

Every TFX Beam executor (``BaseBeamExecutor.__init__``) passes its Beam args through
``tfx.utils.dependency_utils.make_beam_dependency_flags``, which copies the installed TFX into a temp
folder and runs ``setup.py sdist`` on it (~3-5 s and 49 MB per executor; see
``benchmarks/beam_executor_setup.py``), so that remote workers (Dataflow, Flink, Spark) can install
it. DirectRunner workers run in the executor's own Python and never read it: a local run and every
Beam step of a Kubeflow run (each a pod running TFX's entrypoint, which constructs our executor
classes) would pay for it for nothing. The pipeline's Beam executors therefore construct their TFX
parent inside `without_sdist_on_direct_runner` (mixin `NoSdistOnDirectRunner`).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, List, Sequence

DIRECT_RUNNERS = (None, "DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner")

# TFX looks the function up on its module at every construction; two executors constructed at once
# in one process must not restore each other's patch.
_PATCH_LOCK = threading.RLock()


def runs_on_direct_runner(beam_pipeline_args: Sequence[str]) -> bool:
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    return PipelineOptions(flags=list(beam_pipeline_args)).view_as(StandardOptions).runner in DIRECT_RUNNERS


@contextlib.contextmanager
def without_sdist_on_direct_runner() -> Iterator[None]:
    """While open, TFX's Beam executors get no sdist on a DirectRunner; other runners still get it."""
    from tfx.utils import dependency_utils

    with _PATCH_LOCK:
        make_flags = dependency_utils.make_beam_dependency_flags

        def flags(beam_pipeline_args: List[str]) -> List[str]:
            if runs_on_direct_runner(beam_pipeline_args):
                return list(beam_pipeline_args)
            return make_flags(beam_pipeline_args)

        dependency_utils.make_beam_dependency_flags = flags
        try:
            yield
        finally:
            dependency_utils.make_beam_dependency_flags = make_flags


class NoSdistOnDirectRunner:
    """Mixin, first among a TFX Beam executor's bases: its construction skips the sdist on a DirectRunner."""

    def __init__(self, context=None):
        with without_sdist_on_direct_runner():
            super().__init__(context)
