"""pipelines/trainer_spec.py: the spec file a training cluster's pods run the pipeline's Trainer step from."""
import json


def test_write_spec_gives_the_pipeline_trainer_step(tmp_path):
    from pipelines import trainer_spec
    out = tmp_path / "trainer_spec.json"
    code = trainer_spec.main([str(out), "--examples", "/mnt/run/examples", "--transform-graph",
                              "/mnt/run/transform_graph", "--schema", "/mnt/run/schema", "--model",
                              "/mnt/run/model", "--model-run", "/mnt/run/model_run",
                              "--set", "trainer.distribution=parameter_server", "--set", "trainer.epochs=2"])
    assert code == 0
    spec = json.loads(out.read_text())
    assert sorted(spec["inputs"]) == ["examples", "schema", "transform_graph"]
    assert spec["inputs"]["examples"][0]["artifact"]["uri"] == "/mnt/run/examples"
    assert spec["outputs"] == {"model": "/mnt/run/model", "model_run": "/mnt/run/model_run"}
    assert spec["exec_properties"]["run_fn"] == "components.trainer_module.run_fn"
    trainer = json.loads(json.loads(spec["exec_properties"]["custom_config"])["trainer"])
    assert trainer["distribution"] == "parameter_server" and trainer["epochs"] == 2
