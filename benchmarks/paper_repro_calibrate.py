"""One-seed DNN runs on a generated set, to choose paper_repro's grids for the generated data.

    TF_USE_LEGACY_KERAS=1 PYTHONPATH=. python -m benchmarks.paper_repro_calibrate 200000 50000 \\
        '[["adam", 0.005, 0], ["group_adam", 0.005, 1e-4], ["group_adagrad", 0.3, 0.01]]'

Each entry is [method, learning rate, l21]; prints test AUC, embedding-row sparsity and precision /
recall of the kept rows against the planted truth, like benchmarks/paper_repro.py (whose data
preparation, cache, model and optimizers it uses).
"""
import dataclasses
import json
import sys
import time

from benchmarks import paper_repro as pr


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rows, test_rows, plan = int(argv[0]), int(argv[1]), json.loads(argv[2])
    cache = argv[3] if len(argv) > 3 else pr.Settings().cache_dir
    # The calibration is of the shared grids: no generated-set overrides.
    s = pr.Settings(generated_rows=rows, generated_test_rows=test_rows, cache_dir=cache,
                    generated_group_adam_l21=None, generated_group_adagrad_l21=None,
                    generated_adagrad_learning_rate=None)
    data = pr.prepare("generated", s)
    from pipelines.generator import GroundTruth
    truth = GroundTruth.load(data.info["truth_path"]).signal_values()
    print(f"{rows} train / {test_rows} test rows; Bayes-optimal test AUC {data.info['bayes_auc_test']:.4f}", flush=True)
    for method, lr, l21 in plan:
        field = "adagrad_learning_rate" if method == "group_adagrad" else "learning_rate"
        trainer = pr.Trainer(data, dataclasses.replace(s, **{field: lr}))
        started = time.time()
        model, _ = trainer.session("dnn", method).train(0, l21)
        m = trainer.evaluate(model, truth)
        print(f"{method} lr {lr} l21 {l21}: auc {m['auc']:.4f} sparsity {m['sparsity']:.4f} "
              f"P {m['precision']:.3f} R {m['recall']:.3f} rows {m['rows']} ({time.time() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
