"""Synthetic Criteo-layout click logs with a planted ground truth.

The click probability of a row is ``sigmoid(bias + sum of the weights of its signal categorical
values + sum over signal integer fields of coef * (log1p(max(x, 0)) - mean))`` where a missing integer
contributes ``coef * (0 - mean)`` (the same value Transform gives a missing integer). Only some
categorical fields carry signal, and within them only some of the frequent values; every other
field and value is noise. The truth is saved as JSON so that tests and benchmarks can

* compute the Bayes-optimal AUC and logloss on a generated set (the ceiling for any model), and
* know exactly which (field, value) embedding rows a sparse model should keep.

Everything is deterministic by seed: the truth by ``seed``; the rows of a span by ``(seed, span)``,
so consecutive daily spans share one truth.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

N_INT = 13
N_CAT = 26
INT_COLUMNS = [f"I{i}" for i in range(1, N_INT + 1)]
CAT_COLUMNS = [f"C{i}" for i in range(1, N_CAT + 1)]

# Criteo-like spread of cardinalities (small demo-sized defaults; scale with --vocab-scale).
_DEFAULT_VOCAB = [300, 500, 2000, 400, 60, 10, 1000, 80, 3, 3000, 1500, 2500, 800,
                  20, 1200, 2200, 10, 500, 1500, 4, 2500, 8, 12, 1800, 30, 1000]
# Rates at which each field is empty, in the spirit of Criteo's (I1 ~45%, C19 ~44%, ...).
_INT_MISSING = [0.45, 0.0, 0.2, 0.2, 0.03, 0.22, 0.04, 0.0, 0.04, 0.45, 0.04, 0.76, 0.2]
_CAT_MISSING = [0.0] * 12 + [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.44, 0.44, 0.0, 0.76, 0.0, 0.0, 0.44, 0.44]


@dataclasses.dataclass
class GeneratorConfig:
    seed: int = 7
    vocab_sizes: Sequence[int] = tuple(_DEFAULT_VOCAB)
    zipf: float = 1.1
    signal_cat_fields: Sequence[str] = ("C1", "C2", "C5", "C6", "C8", "C13", "C17", "C24")
    signal_int_fields: Sequence[str] = ("I1", "I5", "I8")
    # Within a signal field, values among the `signal_top_k` most frequent carry a weight with
    # probability `signal_value_fraction`; all other values have weight 0.
    signal_top_k: int = 40
    signal_value_fraction: float = 0.5
    weight_scale: float = 0.9
    int_coef_scale: float = 0.4
    target_ctr: float = 0.25
    negative_int_rate: float = 0.05  # I2 holds small negative values, as in Criteo

    def to_dict(self):
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def value_string(field: str, index: int, seed: int) -> str:
    """Criteo-looking 8-hex-digit token for value `index` of `field`."""
    return hashlib.blake2b(f"{seed}:{field}:{index}".encode(), digest_size=4).hexdigest()


def _zipf_probs(n: int, s: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return p / p.sum()


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class GroundTruth:
    """The planted model: enough to score any row of the layout."""

    def __init__(self, d: Dict):
        self.d = d
        self.bias = float(d["bias"])
        self.cat_weights: Dict[str, Dict[str, float]] = d["cat_weights"]
        self.int_coefs: Dict[str, float] = d["int_coefs"]
        self.int_means: Dict[str, float] = d["int_means"]

    @classmethod
    def load(cls, path: str) -> "GroundTruth":
        with open(path) as f:
            return cls(json.load(f))

    def logit(self, ints: Dict[str, Optional[int]], cats: Dict[str, Optional[str]]) -> float:
        z = self.bias
        for f, w in self.cat_weights.items():
            v = cats.get(f)
            if v is not None:
                z += w.get(v, 0.0)
        for f, c in self.int_coefs.items():
            x = ints.get(f)
            t = 0.0 if x is None else float(np.log1p(max(x, 0)))
            z += c * (t - self.int_means[f])
        return z

    def signal_values(self) -> Dict[str, List[str]]:
        """(field -> values) whose embedding rows a sparse model should keep."""
        return {f: sorted(v for v, w in ws.items() if w != 0.0) for f, ws in self.cat_weights.items()}


def expected_auc(p: np.ndarray) -> float:
    """AUC of the true probabilities, in expectation over the Bernoulli labels.

    Row i is a positive with weight p_i and a negative with weight 1 - p_i; pairs of a row with
    itself are excluded; ties count one half.
    """
    p = np.asarray(p, dtype=np.float64)
    order = np.argsort(p, kind="mergesort")
    ps = p[order]
    pos, neg = ps, 1.0 - ps
    # Group ties so that each counts one half.
    uniq, start = np.unique(ps, return_index=True)
    pos_g = np.add.reduceat(pos, start)
    neg_g = np.add.reduceat(neg, start)
    neg_below = np.concatenate([[0.0], np.cumsum(neg_g)[:-1]])
    tie_pairs = pos_g * neg_g - np.add.reduceat(pos * neg, start)  # exclude self-pairs
    num = float(np.sum(pos_g * neg_below) + 0.5 * np.sum(tie_pairs))
    den = float(pos.sum() * neg.sum() - np.sum(pos * neg))
    return num / den


def make_truth(cfg: GeneratorConfig) -> Dict:
    rng = np.random.default_rng([cfg.seed, 0])
    if len(cfg.vocab_sizes) != N_CAT:
        raise ValueError(f"vocab_sizes needs {N_CAT} entries, got {len(cfg.vocab_sizes)}")
    cat_weights: Dict[str, Dict[str, float]] = {}
    for f in cfg.signal_cat_fields:
        n = cfg.vocab_sizes[CAT_COLUMNS.index(f)]
        k = min(n, cfg.signal_top_k)
        chosen = rng.random(k) < cfg.signal_value_fraction
        weights = rng.normal(0.0, cfg.weight_scale, size=k) * chosen
        cat_weights[f] = {value_string(f, i, cfg.seed): float(weights[i]) for i in range(k)}
    int_coefs = {f: float(rng.choice([-1, 1]) * (0.5 + rng.random()) * cfg.int_coef_scale)
                 for f in cfg.signal_int_fields}
    truth = {"generator": cfg.to_dict(), "bias": 0.0, "cat_weights": cat_weights,
             "int_coefs": int_coefs, "int_means": {f: 0.0 for f in cfg.signal_int_fields}}
    # Centre the integer terms and choose the bias for the target CTR on a pilot sample.
    pilot = _sample(cfg, truth, 20000, rng=np.random.default_rng([cfg.seed, 1]))
    for f in cfg.signal_int_fields:
        truth["int_means"][f] = float(np.mean(pilot["int_t"][f]))
    rest = _logits(truth, pilot)
    lo, hi = -10.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(_sigmoid(mid + rest)) < cfg.target_ctr:
            lo = mid
        else:
            hi = mid
    truth["bias"] = (lo + hi) / 2
    return truth


def _sample(cfg: GeneratorConfig, truth: Dict, rows: int, rng: np.random.Generator) -> Dict:
    ints, int_t, cats, cat_idx = {}, {}, {}, {}
    for j, f in enumerate(INT_COLUMNS):
        mu, sigma = 1.0 + (j % 5) * 0.6, 1.0 + (j % 3) * 0.4
        x = np.maximum(np.floor(np.exp(rng.normal(mu, sigma, size=rows))).astype(np.int64) - 1, 0)
        if f == "I2":
            neg = rng.random(rows) < cfg.negative_int_rate
            x[neg] = -rng.integers(1, 4, size=int(neg.sum()))
        missing = rng.random(rows) < _INT_MISSING[j]
        ints[f] = np.where(missing, np.iinfo(np.int64).min, x)
        int_t[f] = np.where(missing, 0.0, np.log1p(np.maximum(x, 0)))
    for j, f in enumerate(CAT_COLUMNS):
        n = cfg.vocab_sizes[j]
        idx = rng.choice(n, size=rows, p=_zipf_probs(n, cfg.zipf))
        missing = rng.random(rows) < _CAT_MISSING[j]
        cat_idx[f] = np.where(missing, -1, idx)
    return {"ints": ints, "int_t": int_t, "cat_idx": cat_idx, "rows": rows}


def _logits(truth: Dict, sample: Dict) -> np.ndarray:
    seed = truth["generator"]["seed"]
    z = np.full(sample["rows"], truth["bias"], dtype=np.float64)
    for f, ws in truth["cat_weights"].items():
        k = len(ws)
        table = np.array([ws[value_string(f, i, seed)] for i in range(k)])
        idx = sample["cat_idx"][f]
        hit = (idx >= 0) & (idx < k)
        z[hit] += table[idx[hit]]
    for f, c in truth["int_coefs"].items():
        z += c * (sample["int_t"][f] - truth["int_means"][f])
    return z


def _write_tsv(path: str, cfg: GeneratorConfig, sample: Dict, labels: np.ndarray) -> None:
    rows = sample["rows"]
    cols: List[np.ndarray] = [labels.astype(str)]
    missing_int = np.iinfo(np.int64).min
    for f in INT_COLUMNS:
        x = sample["ints"][f]
        col = x.astype(str)
        col[x == missing_int] = ""
        cols.append(col)
    for j, f in enumerate(CAT_COLUMNS):
        n = cfg.vocab_sizes[j]
        vocab = np.array([value_string(f, i, cfg.seed) for i in range(n)] + [""])
        cols.append(vocab[sample["cat_idx"][f]])  # index -1 -> "" (missing)
    table = np.stack(cols, axis=1)
    with open(path, "w", encoding="utf-8") as out:
        for start in range(0, rows, 50000):
            out.write("".join("\t".join(r) + "\n" for r in table[start:start + 50000]))


def generate(out_dir: str, rows: int, cfg: Optional[GeneratorConfig] = None, span: int = 0,
             truth_path: Optional[str] = None) -> Dict:
    """Write `rows` click-log lines to `out_dir/clicks-<span>.tsv` and the truth beside `out_dir`.

    The truth goes to `truth_path` (default: `<out_dir>/../ground_truth.json`, outside the data
    folder so that ExampleGen never reads it). Returns a report with the set's Bayes-optimal metrics.
    """
    cfg = cfg or GeneratorConfig()
    if rows <= 0:
        raise ValueError(f"rows must be positive, got {rows}")
    os.makedirs(out_dir, exist_ok=True)
    truth_path = truth_path or os.path.join(os.path.dirname(os.path.abspath(out_dir)), "ground_truth.json")
    truth = make_truth(cfg)
    rng = np.random.default_rng([cfg.seed, 2, span])
    sample = _sample(cfg, truth, rows, rng)
    p = _sigmoid(_logits(truth, sample))
    labels = (rng.random(rows) < p).astype(np.int64)
    data_path = os.path.join(out_dir, f"clicks-{span:05d}.tsv")
    _write_tsv(data_path, cfg, sample, labels)
    eps = 1e-12
    report = {
        "path": data_path,
        "rows": rows,
        "span": span,
        "ctr": float(labels.mean()),
        "bayes_auc": expected_auc(p),
        "bayes_logloss": float(-np.mean(p * np.log(p + eps) + (1 - p) * np.log(1 - p + eps))),
    }
    truth["sets"] = truth.get("sets", {})
    if os.path.exists(truth_path):
        with open(truth_path) as f:
            old = json.load(f)
        if old.get("generator") == truth["generator"]:
            truth["sets"] = old.get("sets", {})
    truth["sets"][os.path.basename(data_path)] = report
    with open(truth_path, "w") as f:
        json.dump(truth, f, indent=1, sort_keys=True)
    report["truth_path"] = truth_path
    return report
