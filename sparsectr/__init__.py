"""The import path of sparsectr's own TFX artifact types as Kubeflow Pipelines sees them.

TFX's Kubeflow v2 compiler writes a custom artifact type's ``TYPE_NAME`` as its schema title, which
must read ``<module>.<Class>`` (one dot), and its container entrypoint imports the class back by that
title in every step's pod. Our types are named ``sparsectr.<Class>``; this module resolves those
names to the classes where they live, importing them only when asked (no TensorFlow on import).
"""
import importlib

ARTIFACT_TYPES = {
    "GateReport": "components.gates",
    "ServingCheckReport": "components.serving_check.component",
}


def __getattr__(name):
    if name not in ARTIFACT_TYPES:
        raise AttributeError(f"module 'sparsectr' has no artifact type {name!r}")
    return getattr(importlib.import_module(ARTIFACT_TYPES[name]), name)
