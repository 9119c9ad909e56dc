"""The optimizers inside Keras training: compile(jit_compile=True), checkpoints, MirroredStrategy."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import optim
from tests.optim.keras_problem import accuracy, make_data, make_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _train(jit_compile, epochs=3, l21=0.01):
    x, y = make_data()
    model = make_model()
    model.compile(optimizer=optim.GroupAdam(0.05, l21=l21), jit_compile=jit_compile)
    history = model.fit(x, y, batch_size=128, epochs=epochs, shuffle=False, verbose=0)
    return model, history


def test_group_adam_under_compile_jit_prunes_noise_rows_and_learns():
    # The planted problem of issue #3 (keras_problem.py: logistic regression on two embedded fields,
    # all 40 rows of "a" informative, all 40 rows of "b" noise): Group Adam must zero >= 95% of the
    # noise rows and keep >= 95% of the informative ones. Seeded data, initializers and batch order.
    # Measured with l21=0.02 and 3 epochs: 40/40 noise rows zero, 0/40 informative rows zero; the
    # same at 4 and 5 epochs and at l21=0.015. (l21=0.01 gave 39/40 at 3 epochs but only 34/40 at 5:
    # too close to the threshold. 2 epochs are too few: informative rows are still pruned then.)
    model, history = _train(jit_compile=True, epochs=3, l21=0.02)
    report = optim.sparsity(model)
    assert set(report["tables"]) == {"embedding_a", "embedding_b"}
    noise, informative = report["tables"]["embedding_b"], report["tables"]["embedding_a"]
    assert noise["rows"] == informative["rows"] == 40
    assert noise["fraction"] >= 0.95, report  # zeroes >= 95% of the noise rows
    assert 1.0 - informative["fraction"] >= 0.95, report  # keeps >= 95% of the informative rows
    assert report["rows"] == 80 and 0 < report["fraction"] < 1
    assert accuracy(model, *make_data(seed=1)) > 0.9
    assert history.history["loss"][-1] < history.history["loss"][0]
    # The Dense kernel got the vanilla step: never pruned, no dual slot.
    assert not model.optimizer.is_regularized(model.layers[-1].kernel)


def test_jit_compile_and_graph_mode_agree():
    jit_model, _ = _train(jit_compile=True, epochs=1)
    graph_model, _ = _train(jit_compile=False, epochs=1)
    for a, b in zip(jit_model.get_weights(), graph_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_checkpoint_restore_continues_bit_for_bit(tmp_path):
    x, y = make_data()
    first = ({k: v[:1024] for k, v in x.items()}, y[:1024])
    second = ({k: v[1024:] for k, v in x.items()}, y[1024:])

    def compiled(model, optimizer):
        model.compile(optimizer=optimizer, jit_compile=True)
        return model

    model = compiled(make_model(seed=0), optim.GroupAdam(0.05, l1=1e-4, l21=5e-3))
    model.fit(*first, batch_size=128, shuffle=False, verbose=0)
    path = tf.train.Checkpoint(optimizer=model.optimizer, model=model).save(
        str(tmp_path / "ckpt")
    )
    model.fit(*second, batch_size=128, shuffle=False, verbose=0)

    restored = compiled(make_model(seed=7), optim.GroupAdam(0.05, l1=1e-4, l21=5e-3))
    tf.train.Checkpoint(optimizer=restored.optimizer, model=restored).restore(path)
    assert int(restored.optimizer.iterations.numpy()) == 8
    restored.fit(*second, batch_size=128, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert len(model.optimizer.variables) == len(restored.optimizer.variables)
    for a, b in zip(model.optimizer.variables, restored.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    import optim
    from tests.optim.keras_problem import make_data, make_model

    def train(strategy, optimizer_xla):
        x, y = make_data(1024)
        with strategy.scope():
            model = make_model()
            optimizer = optim.GroupAdam(0.05, l21=0.003)
            # tf_keras XLA-compiles the per-variable update only on GPUs; force that path here too.
            optimizer.jit_compile = optimizer_xla
            model.compile(optimizer=optimizer)
        model.fit(x, y, batch_size=128, epochs=2, shuffle=False, verbose=0)
        return model.get_weights(), optim.sparsity(model)

    single, single_report = train(tf.distribute.get_strategy(), False)
    out = {"single_fraction": single_report["fraction"]}
    for optimizer_xla in (False, True):
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        weights, report = train(mirrored, optimizer_xla)
        out[str(optimizer_xla)] = {
            "replicas": mirrored.num_replicas_in_sync,
            "max_abs_diff": max(float(np.abs(a - b).max()) for a, b in zip(single, weights)),
            "fraction": report["fraction"],
        }
    print("RESULT" + json.dumps(out))
    """
)


def test_mirrored_strategy_matches_single_device():
    # Two logical CPUs must be configured before TensorFlow starts: a fresh process. Keras's
    # compile(jit_compile=True) with a multi-device MirroredStrategy fails for tf_keras's own Adam too
    # (XLA cannot reach the other replica's variables), so the model step runs in graph mode, and the
    # optimizer's per-variable update both plain and XLA-compiled (what tf_keras does on GPUs).
    # Sparse gradients of the two replicas arrive concatenated, with duplicate ids.
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT"):])
    for optimizer_xla in ("False", "True"):
        run = result[optimizer_xla]
        assert run["replicas"] == 2
        assert run["max_abs_diff"] < 1e-4, result
        assert run["fraction"] == pytest.approx(result["single_fraction"]), result
    assert 0.0 < result["single_fraction"] < 1.0, result
