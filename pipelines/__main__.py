import sys

from pipelines.cli import main


def ignore_tf_shutdown_noise(unraisable):
    """TF 2.16's AtomicFunction.__del__ raises TypeError when the interpreter tears down its module
    (its globals are already None): it prints a traceback per traced function after a run that
    succeeded. Everything else goes to Python's own hook."""
    if unraisable.exc_type is TypeError and getattr(unraisable.object, "__qualname__", "") == "AtomicFunction.__del__":
        return
    sys.__unraisablehook__(unraisable)


if __name__ == "__main__":
    sys.unraisablehook = ignore_tf_shutdown_noise
    sys.exit(main())
