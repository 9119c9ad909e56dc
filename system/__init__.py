"""Kubeflow Pipelines' system artifact types as TFX artifact classes: ``system.HTML``, ``system.Markdown``.

The Kubeflow Pipelines UI renders an artifact whose type is ``system.HTML`` or ``system.Markdown``
(it reads the file at the artifact's URI). TFX's Kubeflow v2 compiler writes a custom artifact type's
``TYPE_NAME`` as its schema title, and its container entrypoint imports the class back by that title
(``<module>.<Class>``): so a TFX step that outputs an HTML page the UI shows needs a class importable
as ``system.HTML``. They are value artifacts: the URI is the file itself, not a folder.
(pipelines/report_step.py's RunReport writes the run report as one.)
"""
from tfx.types.value_artifact import ValueArtifact


class _Text(ValueArtifact):
    def encode(self, value: str) -> bytes:
        return value.encode("utf-8")

    def decode(self, serialized_value: bytes) -> str:
        return serialized_value.decode("utf-8")


class HTML(_Text):
    """An HTML page (the KFP UI renders it)."""
    TYPE_NAME = "system.HTML"


class Markdown(_Text):
    """A Markdown document (the KFP UI renders it)."""
    TYPE_NAME = "system.Markdown"
