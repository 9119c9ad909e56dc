"""Sparsity and size targets (trainer.target_sparsity / max_embedding_bytes): are they reached, and
at what AUC compared with a fixed l21 that gives the same sparsity?

For each dataset (generated Criteo-layout data at 20k, 200k and 1M train rows; the real Criteo and
Avazu samples in ../shared/data) and each seed:

* a fixed-l21 sweep: a log grid of l21, then one more l21 per target, placed by interpolating
  log(l21) against the sweep's sparsity (mean over seeds; extrapolated past its ends) so that a
  fixed run lands next to each target;
* one run per target sparsity (0.5, 0.8, 0.95 by default) with `components.sparsity_target`'s
  controller, starting from the Trainer's default l21 (1e-3), as the Trainer does on a cold start;
* one run with a byte budget (`max_embedding_bytes`): the bytes of a quarter of the rows.

"fixed AUC at that sparsity" is the fixed runs' test AUC against sparsity (means over seeds per
l21), linearly interpolated at the controlled runs' mean reached sparsity; the verdicts are
|reached - target| <= 0.02 (bytes: within 2% of the budget) and AUC >= fixed AUC - 0.003.

Data preparation and training reuse benchmarks/paper_repro.py: ExampleGen's parser, TF Transform's
analysis (cached under --cache-dir: run with paper_repro's --prepare-only, or let this script do
it), the transformed rows in memory, one compiled DNN per dataset re-initialized for every run
(paper_repro.Session). DNN, Group Adam, lr 0.005, XLA off. Real samples: batch 256, 3 epochs
(paper_repro's); generated: batch 256 and 4 epochs at 20k (the demo's Trainer), batch 1024 and 2
epochs at 200k, 1 epoch at 1M (paper_repro's).

    TF_USE_LEGACY_KERAS=1 PYTHONPATH=. python -m benchmarks.sparsity_target \\
        [--datasets criteo,avazu,generated-20000,generated-200000,generated-1000000] \\
        [--out benchmarks/results/sparsity_target.txt]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results", "sparsity_target.txt")
DEFAULT_DATASETS = "criteo,avazu,generated-20000,generated-200000,generated-1000000"
TARGETS = (0.5, 0.8, 0.95)
START_L21 = 1e-3  # TrainerConfig.l21: where the controller starts on a cold start
SPARSITY_TOLERANCE = 0.02
BYTES_TOLERANCE = 0.02
AUC_MARGIN = 0.003


@dataclasses.dataclass
class DatasetPlan:
    name: str
    generated_rows: int = 0
    test_rows: int = 0
    batch_size: int = 256
    epochs: int = 3
    seeds: int = 1
    grid: Sequence[float] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


PLANS = {
    "criteo": DatasetPlan("criteo", seeds=10, grid=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2)),
    "avazu": DatasetPlan("avazu", seeds=10, grid=(3e-4, 1e-3, 3e-3, 1e-2, 3e-2)),
    "generated-20000": DatasetPlan("generated-20000", 20000, 20000, 256, 4, seeds=2,
                                   grid=(3e-4, 1e-3, 3e-3, 1e-2, 3e-2)),
    "generated-200000": DatasetPlan("generated-200000", 200000, 50000, 1024, 2, seeds=1,
                                    grid=(3e-5, 1e-4, 3e-4, 1e-3, 3e-3)),
    "generated-1000000": DatasetPlan("generated-1000000", 1000000, 100000, 1024, 1, seeds=1,
                                     grid=(3e-5, 1e-4, 3e-4, 1e-3, 3e-3)),
}


def _trainer(plan: DatasetPlan, cache_dir: str, log):
    from benchmarks import paper_repro as pr
    generated = plan.name.startswith("generated")
    s = pr.Settings(datasets=("generated" if generated else plan.name,), models=("dnn",), seeds=plan.seeds,
                    generated_rows=plan.generated_rows or 1, generated_test_rows=plan.test_rows or 1,
                    epochs_real=plan.epochs, epochs_generated=plan.epochs, batch_size=plan.batch_size,
                    batch_size_generated=plan.batch_size, tfmot=False, jit_compile=False, cache_dir=cache_dir)
    data = pr.prepare("generated" if generated else plan.name, s, log=log)
    return pr.Trainer(data, s)


def _interpolate(points: Sequence[tuple], x: float) -> Optional[float]:
    """Linear interpolation of (x, y) points (any order) at x; None outside their range."""
    pts = sorted(points)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def _l21_for(points: Sequence[tuple], target: float) -> Optional[float]:
    """log-interpolated l21 at which the fixed runs' (l21, sparsity) points reach `target`; beyond
    them, extrapolated from the two nearest points (at most 3x past the last l21)."""
    pts = sorted((s, math.log(l)) for l, s in points)
    value = _interpolate(pts, target)
    if value is None and len(pts) >= 2:
        (s0, l0), (s1, l1) = (pts[-2], pts[-1]) if target > pts[-1][0] else (pts[1], pts[0])
        if s1 != s0:
            value = l1 + (l0 - l1) * (target - s1) / (s0 - s1)
            value = min(value, l1 + math.log(3)) if target > pts[-1][0] else max(value, l1 - math.log(3))
    return None if value is None else float(f"{math.exp(value):.3g}")


class Bench:
    def __init__(self, trainer, log=print):
        from benchmarks import paper_repro as pr
        self.trainer, self.log = trainer, log
        self.session = pr.Session(trainer, "dnn", "group_adam")
        self.full_bytes = None

    def fixed(self, seed: int, l21: float) -> Dict:
        self.session.callbacks = []
        model, secs = self.session.train(seed, l21)
        out = self._measure(model)
        out.update(kind="fixed", seed=seed, l21=l21, fit_seconds=round(secs, 1))
        return out

    def target(self, seed: int, sparsity: Optional[float] = None, max_bytes: Optional[float] = None,
               settings=None) -> Dict:
        from components.sparsity_target import SparsityTarget
        from optim.sparsity_control import Target
        callback = SparsityTarget({"*": Target(sparsity=sparsity, max_bytes=max_bytes)},
                                  total_steps=self.trainer.steps, settings=settings)
        self.session.callbacks = [callback]
        model, secs = self.session.train(seed, START_L21)
        self.session.callbacks = []
        out = self._measure(model)
        group = callback.report()["groups"]["*"]
        out.update(kind="target", seed=seed, target_sparsity=sparsity, max_bytes=max_bytes, l21=group["l21"],
                   trajectory=[(p["step"], p["l21"], p["sparsity"]) for p in group["trajectory"]],
                   fit_seconds=round(secs, 1))
        return out

    def _measure(self, model) -> Dict:
        m = self.trainer.evaluate(model)
        tables = self.trainer.embedding_variables(model)
        kept = sum(int(np.count_nonzero(np.any(t.numpy() != 0, axis=1))) * t.shape[1] * 4 for t in tables.values())
        self.full_bytes = sum(int(t.shape[0]) * t.shape[1] * 4 for t in tables.values())
        return {"auc": m["auc"], "logloss": m["logloss"], "sparsity": m["sparsity"], "rows": m["rows"],
                "kept_bytes": kept}


def run_dataset(plan: DatasetPlan, cache_dir: str, targets: Sequence[float], log=print,
                settings=None, skip_fixed: bool = False) -> Dict:
    started = time.time()
    trainer = _trainer(plan, cache_dir, log)
    bench = Bench(trainer, log)
    runs: List[Dict] = []

    def record(row):
        runs.append(row)
        what = (f"l21 {row['l21']:.3g}" if row["kind"] == "fixed" else
                f"target {row['target_sparsity'] if row['target_sparsity'] is not None else row['max_bytes']:g}"
                f" -> l21 {row['l21']:.3g}")
        log(f"  [{plan.name}] seed {row['seed']} {row['kind']:6s} {what}: auc {row['auc']:.4f} sparsity "
            f"{row['sparsity']:.4f} kept {row['kept_bytes']} B ({row['fit_seconds']}s)")

    for seed in range(plan.seeds):
        for l21 in ([] if skip_fixed else plan.grid):
            record(bench.fixed(seed, l21))
    if not skip_fixed:
        # One more fixed l21 per target, next to it (from the sweep's mean sparsity per l21), for every seed.
        sweep = [(l21, float(np.mean([r["sparsity"] for r in runs if r["l21"] == l21]))) for l21 in plan.grid]
        extra = sorted({l for l in (_l21_for(sweep, t) for t in targets) if l and l not in plan.grid})
        for seed in range(plan.seeds):
            for l21 in extra:
                record(bench.fixed(seed, l21))
    for seed in range(plan.seeds):
        for t in targets:
            record(bench.target(seed, sparsity=t, settings=settings))
    budget = round(0.25 * bench.full_bytes)
    for seed in range(plan.seeds):
        record(bench.target(seed, max_bytes=budget, settings=settings))
    info = dict(trainer.data.info)
    return {"dataset": plan.name, "plan": dataclasses.asdict(plan), "steps": trainer.steps,
            "train_rows": info["train_rows"], "test_rows": info["test_rows"],
            "bayes_auc_test": info.get("bayes_auc_test"), "table_rows": runs[0]["rows"] if runs else None,
            "full_bytes": bench.full_bytes, "budget_bytes": budget, "runs": runs,
            "seconds": round(time.time() - started, 1)}


def summarize(result: Dict, targets: Sequence[float]) -> List[Dict]:
    """Per target (and the byte budget): reached, fixed-l21 AUC at that sparsity, verdicts."""
    runs = result["runs"]
    fixed = {}
    for r in runs:
        if r["kind"] == "fixed":
            fixed.setdefault(r["l21"], []).append(r)
    curve = [(float(np.mean([r["sparsity"] for r in rs])), float(np.mean([r["auc"] for r in rs])))
             for rs in fixed.values()]
    rows = []
    for t in list(targets) + ["bytes"]:
        if t == "bytes":
            rs = [r for r in runs if r["kind"] == "target" and r["max_bytes"] is not None]
        else:
            rs = [r for r in runs if r["kind"] == "target" and r["target_sparsity"] == t]
        if not rs:
            continue
        reached = float(np.mean([r["sparsity"] for r in rs]))
        auc = float(np.mean([r["auc"] for r in rs]))
        fixed_auc = _interpolate(curve, reached) if curve else None
        nearest = False
        if fixed_auc is None and curve:
            # Just past the fixed runs' range: their nearest point (marked *), if within 0.01.
            edge = min(curve, key=lambda p: abs(p[0] - reached))
            if abs(edge[0] - reached) <= 0.01:
                fixed_auc, nearest = edge[1], True
        row = {"target": t, "seeds": len(rs), "reached": reached,
               "reached_by_seed": [round(r["sparsity"], 4) for r in rs],
               "auc": auc, "fixed_auc": fixed_auc, "fixed_nearest": nearest,
               "l21": [float(f"{r['l21']:.3g}") for r in rs],
               "auc_ok": None if fixed_auc is None else auc >= fixed_auc - AUC_MARGIN}
        if t == "bytes":
            kept = [r["kept_bytes"] for r in rs]
            row.update(budget=result["budget_bytes"], kept_bytes=kept,
                       deviation=max(abs(k / result["budget_bytes"] - 1) for k in kept))
            row["reached_ok"] = row["deviation"] <= BYTES_TOLERANCE
        else:
            row["reached_ok"] = all(abs(r["sparsity"] - t) <= SPARSITY_TOLERANCE for r in rs)
        rows.append(row)
    return rows


def render(results: List[Dict], targets: Sequence[float], command: str, seconds: float) -> str:
    L = ["Sparsity and size targets: reached sparsity (bytes) and test AUC against fixed-l21 runs at the same",
         "sparsity. DNN, Group Adam lr 0.005, XLA off; controller from l21 1e-3 (the Trainer's default).",
         f"Verdicts: reached within +-{SPARSITY_TOLERANCE} of the target (bytes: within {BYTES_TOLERANCE:.0%} of "
         f"the budget) in every seed; AUC >= fixed-l21 AUC at the reached sparsity - {AUC_MARGIN}",
         "(the fixed runs of this script: sweep + one l21 per target; AUC and sparsity means over seeds per l21,",
         "linearly interpolated at the mean reached sparsity; * = just outside the fixed runs' range: their nearest",
         "point, within 0.01 of it).",
         f"Command: {command}", ""]
    L.append("| data | train/test rows | steps | target | reached (per seed) | l21 at the end | AUC | fixed-l21 AUC "
             "| reached | AUC |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for res in results:
        for row in summarize(res, targets):
            if row["target"] == "bytes":
                tgt = f"{row['budget']} B"
                reached = ", ".join(f"{k} B" for k in row["kept_bytes"]) + f" (max dev {row['deviation']:.1%})"
            else:
                tgt = f"{row['target']:g}"
                reached = ", ".join(f"{v:.3f}" for v in row["reached_by_seed"])
            fixed = "n/a" if row["fixed_auc"] is None else f"{row['fixed_auc']:.4f}" + ("*" if row["fixed_nearest"] else "")
            ok = lambda v: "n/a" if v is None else ("PASS" if v else "FAIL")  # noqa: E731
            L.append(f"| {res['dataset']} | {res['train_rows']}/{res['test_rows']} | {res['steps']} | {tgt} | "
                     f"{reached} | {', '.join(f'{v:.3g}' for v in row['l21'])} | {row['auc']:.4f} | {fixed} | "
                     f"{ok(row['reached_ok'])} | {ok(row['auc_ok'])} |")
    L.append("")
    L.append("Fixed-l21 runs (mean over seeds: l21 -> sparsity, AUC) and Bayes-optimal test AUC where known:")
    for res in results:
        fixed = {}
        for r in res["runs"]:
            if r["kind"] == "fixed":
                fixed.setdefault(r["l21"], []).append(r)
        parts = [f"{l:.3g} -> {np.mean([r['sparsity'] for r in rs]):.3f}, {np.mean([r['auc'] for r in rs]):.4f}"
                 for l, rs in sorted(fixed.items())]
        bayes = f"; Bayes {res['bayes_auc_test']:.4f}" if res.get("bayes_auc_test") else ""
        L.append(f"  {res['dataset']} ({res['plan']['seeds']} seed(s), {res['table_rows']} rows, "
                 f"{res['seconds']:.0f}s){bayes}: " + "; ".join(parts))
    L.append("")
    L.append("l21 trajectories of the controlled runs (seed 0; step: l21, measured sparsity):")
    for res in results:
        for r in res["runs"]:
            if r["kind"] == "target" and r["seed"] == 0:
                pts = r["trajectory"]
                pick = [pts[i] for i in sorted(set(np.linspace(0, len(pts) - 1, 6).round().astype(int)))] if pts else []
                tgt = r["target_sparsity"] if r["target_sparsity"] is not None else f"{r['max_bytes']:.0f} B"
                L.append(f"  {res['dataset']} target {tgt}: " + "; ".join(f"{s}: {l:.3g}, {sp:.3f}" for s, l, sp in pick))
    L.append("")
    L.append(f"wall time {seconds:.0f} s, {os.cpu_count()} CPUs (shared)")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    # Here, not at import: a test importing this module must not quiet TF for its subprocesses.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from optim.sparsity_control import ControllerSettings
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default=DEFAULT_DATASETS)
    p.add_argument("--targets", default=",".join(str(t) for t in TARGETS))
    p.add_argument("--seeds", type=int, default=None, help="override every dataset's seed count")
    p.add_argument("--cache-dir", default=os.path.join("/tmp", "sparsectr_paper_repro"))
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--json", default=None, help="also write every run as JSON (default: --out with .json)")
    p.add_argument("--gain", type=float, default=None)
    p.add_argument("--settle", type=float, default=None)
    p.add_argument("--max-step", type=float, default=None)
    p.add_argument("--release", type=float, default=None)
    p.add_argument("--release-end", type=float, default=None)
    p.add_argument("--skip-fixed", action="store_true", help="controlled runs only (tuning)")
    p.add_argument("--render", nargs="+", metavar="JSON",
                   help="no training: write --out from the JSON files of earlier runs (datasets in order)")
    args = p.parse_args(argv)
    if args.render:
        results, commands, seconds = [], [], 0.0
        for path in args.render:
            with open(path) as f:
                part = json.load(f)
            results += part["results"]
            commands.append(part.get("command", "?"))
            seconds += sum(r["seconds"] for r in part["results"])
        order = DEFAULT_DATASETS.split(",")
        results.sort(key=lambda r: order.index(r["dataset"]) if r["dataset"] in order else len(order))
        targets = sorted({r["target_sparsity"] for res in results for r in res["runs"]
                          if r["kind"] == "target" and r["target_sparsity"] is not None})
        command = "; ".join(commands) + "; then TF_USE_LEGACY_KERAS=1 PYTHONPATH=. python -m benchmarks.sparsity_target " \
            + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
        text = render(results, targets, command, seconds)
        with open(args.out, "w") as f:
            f.write(text)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"results": results, "command": command}, f, indent=1)
        print(text)
        return 0
    settings = ControllerSettings()
    for name in ("gain", "settle", "max_step", "release", "release_end"):
        if getattr(args, name) is not None:
            settings = dataclasses.replace(settings, **{name: getattr(args, name)})
    targets = [float(t) for t in args.targets.split(",") if t]
    started = time.time()
    results = []
    json_path = args.json or os.path.splitext(args.out)[0] + ".json"
    command = "TF_USE_LEGACY_KERAS=1 PYTHONPATH=. python -m benchmarks.sparsity_target " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    for name in args.datasets.split(","):
        plan = PLANS[name]
        if args.seeds:
            plan = dataclasses.replace(plan, seeds=args.seeds)
        results.append(run_dataset(plan, args.cache_dir, targets, log=lambda m: print(m, flush=True),
                                   settings=settings, skip_fixed=args.skip_fixed))
        with open(json_path, "w") as f:
            json.dump({"results": results, "settings": dataclasses.asdict(settings), "command": command}, f,
                      indent=1)
        import tf_keras as keras
        keras.backend.clear_session()
    text = render(results, targets, command, time.time() - started)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
