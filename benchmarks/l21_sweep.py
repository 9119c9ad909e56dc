"""Held-out AUC and sparsity of the Trainer's defaults against a stronger group lasso (and Adam), on
the real Criteo sample and on generated data: the measurements behind README "Choosing l21".

    TF_USE_LEGACY_KERAS=1 PYTHONPATH=. python -m benchmarks.l21_sweep [--out benchmarks/results/l21_sweep.txt]

Each dataset is analysed once by TF Transform with the project's `preprocessing_fn` (Beam in memory);
each configuration is the Trainer's model and optimizer (`TrainerConfig` defaults,
`components.training.build_model` and `make_optimizer`) with the overrides shown,
XLA off, evaluated on held-out rows after every epoch. Datasets: the real Criteo sample
(../shared/data/criteo/wide-resdnn: train.csv, reported on dev.csv + test.csv) and generated spans
(span 0 trains, span 1 tests; the truth gives the Bayes-optimal AUC, the noise fields and the signal
rows).
"""
import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRITEO = os.path.join(os.path.dirname(REPO), "shared", "data", "criteo", "wide-resdnn")
CONFIGS = [{}, {"l21": 3e-3}, {"l21": 1e-2}, {"optimizer": "adam"}]


def _data(name, workdir):
    import tensorflow_transform as tft

    from components.click_log_example_gen.line_parser import LineParser
    from components.dataset_spec import load_spec
    from pipelines import generator
    from components.local_transform import analyze, transformed

    spec = load_spec("criteo")
    parser = LineParser(spec)

    def rows(paths):
        return [parser.parse(line).example for p in paths for line in open(p).read().splitlines()]

    truth = bayes = None
    if name == "criteo":
        train, test = rows([os.path.join(CRITEO, "train.csv")]), rows(
            [os.path.join(CRITEO, f) for f in ("dev.csv", "test.csv")])
    else:
        n = int(name.split("-")[1])
        a = generator.generate(os.path.join(workdir, name), n, span=0)
        b = generator.generate(os.path.join(workdir, name), 20000, span=1)
        train, test, bayes = rows([a["path"]]), rows([b["path"]]), b["bayes_auc"]
        truth = generator.GroundTruth.load(a["truth_path"])
    out = os.path.join(workdir, name + "-transform")
    analyze(spec, train, out)
    tft_output = tft.TFTransformOutput(out)
    return spec, tft_output, transformed(tft_output, train), transformed(tft_output, test), truth, bayes, len(train), len(test)


def _run(spec, tft_output, train, test, truth, override):
    import tf_keras as keras

    import optim
    from components import models
    from components.preprocessing import LABEL_KEY
    from components.trainer_config import TrainerConfig
    from components.training import build_model, make_optimizer
    from components.vocabulary import FieldVocabulary

    train, test = dict(train), dict(test)
    y_train, y_test = train.pop(LABEL_KEY), test.pop(LABEL_KEY)
    cfg = dataclasses.replace(TrainerConfig(), jit_compile=False, **override)
    keras.utils.set_random_seed(cfg.seed)
    vocab = FieldVocabulary(spec, tft_output)
    model = build_model(cfg, spec, vocab)
    model.compile(optimizer=make_optimizer(cfg), loss="binary_crossentropy",
                  metrics=[keras.metrics.AUC(name="auc", num_thresholds=2000)])
    aucs = []
    for _ in range(cfg.epochs):
        model.fit(train, y_train, batch_size=cfg.batch_size, epochs=1, verbose=0)
        aucs.append(round(model.evaluate(test, y_test, batch_size=4096, return_dict=True, verbose=0)["auc"], 4))
    tables = {f: t.numpy() for f, t in models.embedding_tables(model).items()}
    result = {"config": override, "auc_by_epoch": aucs, "sparsity": round(optim.sparsity(models.embedding_tables(model))["fraction"], 4)}
    if truth is not None:
        zero = {f: ~t.any(axis=1) for f, t in tables.items()}
        noise = [f for f in tables if f not in truth.cat_weights]
        result["noise_rows_zero"] = round(sum(int(zero[f].sum()) for f in noise) / sum(len(zero[f]) for f in noise), 4)
        kept = total = 0
        for field, values in truth.signal_values().items():
            row_of = {v: i for i, v in enumerate(vocab.values[field])}
            rows = [row_of[v.encode()] for v in values if v.encode() in row_of]
            total += len(rows)
            kept += int((~zero[field][rows]).sum())
        result["signal_rows_kept"] = [kept, total]
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="criteo,generated-20000,generated-60000")
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "l21_sweep.txt"))
    args = p.parse_args(argv)
    started = time.time()
    lines = ["Held-out AUC after each epoch and embedding-row sparsity: TrainerConfig defaults (DNN, lr 0.005,",
             "batch 256, 4 epochs, l21 1e-3) with the overrides shown; XLA off. Command: python -m benchmarks.l21_sweep", ""]
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.datasets.split(","):
            spec, tft_output, train, test, truth, bayes, n_train, n_test = _data(name, workdir)
            lines.append(f"{name}: {n_train} train / {n_test} test rows"
                         + (f"; Bayes-optimal test AUC {bayes:.4f}" if bayes else ""))
            for override in CONFIGS:
                r = _run(spec, tft_output, train, test, truth, override)
                extra = (f"  noise-field rows zero {r['noise_rows_zero']:.3f}  signal rows kept "
                         f"{r['signal_rows_kept'][0]}/{r['signal_rows_kept'][1]}") if truth else ""
                line = f"  {json.dumps(override) or '{}':24s} AUC/epoch {r['auc_by_epoch']}  sparsity {r['sparsity']:.3f}{extra}"
                print(line, flush=True)
                lines.append(line)
            lines.append("")
    lines.append(f"wall time {time.time() - started:.0f} s, {os.cpu_count()} CPUs")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
