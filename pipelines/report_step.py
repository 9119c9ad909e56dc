"""Pipeline steps after the push: the run report as an HTML artifact, and (optional) bulk inference.

* ``RunReport`` renders pipelines/report.py's page from the run's own artifacts (the summary blocks of
  pipelines/summary.py's ``from_artifacts``) into a ``system.HTML`` artifact (system/__init__.py):
  the Kubeflow Pipelines UI shows it on the run's page; locally it lands under
  ``<pipeline_root>/RunReport/report/<id>/value``. The CLI's ``<output>/report.html`` is the same page
  with what only the CLI knows (duration, the Bayes-optimal line of generated data, demo scores).
* ``scoring.bulk_inference`` (off by default): TFX's ``BulkInferrer`` scores the ingested examples
  (``scoring.bulk_inference_splits``) with the trained model once the gates blessed it, through its
  ``serving_default`` signature, into an ``InferenceResult`` of PredictionLogs, for backfills. To
  score click-log files with a pushed model outside a run: ``python -m pipelines score``.
"""

import os
from typing import List

from tfx.components import BulkInferrer
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.proto import bulk_inferrer_pb2
from tfx.types import standard_artifacts

from components.gates import GateReport
from system import HTML


@component
def RunReport(
    examples: InputArtifact[standard_artifacts.Examples],
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
    model: InputArtifact[standard_artifacts.Model],
    evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
    gate_report: InputArtifact[GateReport],
    pushed_model: InputArtifact[standard_artifacts.PushedModel],
    baseline_model: InputArtifact[standard_artifacts.Model],
    report: OutputArtifact[HTML],
):
    """The run report (pipelines/report.py) of this run's artifacts, as an HTML page."""
    from tfx.dsl.io import fileio

    from pipelines import report as run_report
    from pipelines.summary import from_artifacts
    arts = {}
    for artifact in (examples, anomalies, model, evaluation, gate_report, pushed_model, baseline_model):
        arts.setdefault(artifact.type_name, []).append(artifact.mlmd_artifact)
    summary = from_artifacts(arts)
    summary["status"] = "succeeded"  # every step up to the push completed
    text = run_report.render(summary)
    fileio.makedirs(os.path.dirname(report.uri))
    with fileio.open(report.uri, "w") as f:
        f.write(text)


def after_push_steps(config, example_gen, example_validator, trainer, evaluator, sparsity_gate,
                     latest_pushed, pusher) -> List:
    """The RunReport step, and BulkInferrer when ``scoring.bulk_inference`` is on."""
    steps: List = [RunReport(
        examples=example_gen.outputs["examples"],
        anomalies=example_validator.outputs["anomalies"],
        model=trainer.outputs["model"],
        evaluation=evaluator.outputs["evaluation"],
        gate_report=sparsity_gate.outputs["report"],
        pushed_model=pusher.outputs["pushed_model"],
        baseline_model=latest_pushed.outputs["model"],
    )]
    if config.scoring.bulk_inference:
        steps.append(BulkInferrer(
            examples=example_gen.outputs["examples"],
            model=trainer.outputs["model"],
            model_blessing=sparsity_gate.outputs["blessing"],
            data_spec=bulk_inferrer_pb2.DataSpec(example_splits=list(config.scoring.bulk_inference_splits)),
            model_spec=bulk_inferrer_pb2.ModelSpec(model_signature_name=["serving_default"]),
        ))
    return steps
