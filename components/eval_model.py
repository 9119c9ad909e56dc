"""How the Evaluator loads the models it scores: TFMA's own loader, each one-input signature callable
with its input by position as well as by name.

TFMA calls a signature with the batch of serialized examples by position (`signature(examples)`).
A signature restored from a SavedModel is bound by name: TF first tries the call as written, fails,
formats a TypeError whose message holds the whole batch (1.4 MB for 1,000 demo examples), and only
then binds the argument to the signature's input. That detour cost 33 ms of a 43 ms call of the
demo model on 1,000 examples; bound by name here, the call is the model's 10 ms.

TFX's Evaluator takes ``custom_eval_shared_model`` from the module named by its ``module_path``.
"""
from __future__ import annotations

from typing import Any, Callable


class InputByName:
    """A one-input signature that also takes its input by position: ``f(x)`` calls ``f(name=x)``.

    Everything else (``structured_input_signature``, ``structured_outputs``, ...) is the signature's.
    """

    def __init__(self, signature):
        self._signature = signature
        (self.input_name,) = signature.structured_input_signature[1]

    def __call__(self, *args, **kwargs):
        if len(args) > 1 or (args and self.input_name in kwargs):
            raise TypeError(f"signature takes one input, {self.input_name!r}; got {len(args)} positional "
                            f"and {sorted(kwargs)} by name")
        if args:
            kwargs[self.input_name] = args[0]
        return self._signature(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._signature, name)


def _takes_one_input_by_name(signature) -> bool:
    structured = getattr(signature, "structured_input_signature", None)
    return (isinstance(structured, tuple) and len(structured) == 2 and not structured[0]
            and isinstance(structured[1], dict) and len(structured[1]) == 1)


def with_inputs_by_name(model):
    """`model` (a loaded SavedModel) with each of its one-input signatures wrapped in `InputByName`."""
    signatures = getattr(model, "signatures", None)
    if not signatures:
        return model
    model.signatures = {name: InputByName(s) if _takes_one_input_by_name(s) else s
                        for name, s in signatures.items()}
    return model


class _LoadWithInputsByName:
    """A TFMA construct_fn: the model that `construct_fn` loads, through `with_inputs_by_name`.
    (A class, not a closure: Beam pickles it to its workers.)"""

    def __init__(self, construct_fn: Callable[[], Any]):
        self.construct_fn = construct_fn

    def __call__(self):
        return with_inputs_by_name(self.construct_fn())


def custom_eval_shared_model(eval_saved_model_path, model_name, eval_config, **kwargs):
    """TFMA's default shared model for `eval_saved_model_path`, its signatures callable by position.

    TFX's Evaluator calls this (its ``module_path``) for the candidate and for the baseline.
    """
    import tensorflow_model_analysis as tfma
    shared = tfma.default_eval_shared_model(eval_saved_model_path=eval_saved_model_path,
                                            model_name=model_name, eval_config=eval_config, **kwargs)
    loader = shared.model_loader
    return shared._replace(model_loader=tfma.types.ModelLoader(
        construct_fn=_LoadWithInputsByName(loader.construct_fn), tags=loader.tags))
