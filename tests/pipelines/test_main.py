"""python -m pipelines: TF's function teardown at interpreter exit is not printed; other unraisable
exceptions still are."""
import types

import pytest

from pipelines import __main__ as entry


def _unraisable(exc_type, qualname):
    def fn():
        pass
    fn.__qualname__ = qualname
    return types.SimpleNamespace(exc_type=exc_type, exc_value=exc_type("x"), exc_traceback=None,
                                 err_msg=None, object=fn)


def test_tf_atomic_function_teardown_is_dropped(monkeypatch):
    seen = []
    monkeypatch.setattr(entry.sys, "__unraisablehook__", seen.append)
    entry.ignore_tf_shutdown_noise(_unraisable(TypeError, "AtomicFunction.__del__"))
    assert seen == []


@pytest.mark.parametrize("exc_type, qualname", [(TypeError, "Other.__del__"), (ValueError, "AtomicFunction.__del__")])
def test_other_unraisable_exceptions_still_reach_pythons_hook(monkeypatch, exc_type, qualname):
    seen = []
    monkeypatch.setattr(entry.sys, "__unraisablehook__", seen.append)
    entry.ignore_tf_shutdown_noise(_unraisable(exc_type, qualname))
    assert len(seen) == 1
