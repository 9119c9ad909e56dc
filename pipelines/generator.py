"""Synthetic Criteo-layout click logs with a planted ground truth.

The click probability of a row is ``sigmoid(bias + sum of the weights of its signal categorical
values + sum over signal integer fields of coef * (log1p(max(x, 0)) - mean))`` where a missing integer
contributes ``coef * (0 - mean)`` (the same value Transform gives a missing integer). Only some
categorical fields carry signal, and within them only some of the frequent values; every other
field and value is noise. The truth is saved as JSON so that tests and benchmarks can

* compute the Bayes-optimal AUC and logloss on a generated set (the ceiling for any model), and
* know exactly which (field, value) embedding rows a sparse model should keep.

Everything is deterministic by seed: the truth by ``seed``; the rows of a span by ``(seed, span)``,
so consecutive daily spans share one truth. Rows are drawn, scored and written in chunks of
``CHUNK_ROWS``: memory does not grow with the set, and the file does not depend on the chunk size.

Presets (`preset_config`, ``python -m pipelines generate --preset NAME``):

* ``default``: demo-sized vocabularies (3 to 3,000 values a field), one Zipf exponent.
* ``criteo-scale``: Criteo-like cardinalities (`CRITEO_SCALE`): eight fields with 1e6 to 2.5e6
  values drawn from Zipf-Mandelbrot profiles (a flat head of about ``q`` values, then a power-law tail
  of exponent ``s``), so that a 10M-row day has about 1.1M (field, value) pairs at or above Criteo's
  frequency threshold of 10 in the train split and millions of rarer ones; Criteo's missing rates;
  daily spans that drift in their tails (`GeneratorConfig.drift_ranks`). See `expected_vocabulary`
  for the analytic count and docs in `CRITEO_SCALE` for how it was checked.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
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

# Keys of GeneratorConfig added with the presets: left out of `to_dict` (and so of the truth file)
# while None, so that the default's truth files and rows are those of the generator before them.
_OPTIONAL_KEYS = ("preset", "zipf_exponents", "zipf_offsets", "int_missing", "cat_missing", "drift_head",
                  "drift_ranks")


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
    # -- since the presets; None = as before --------------------------------------------------------
    preset: Optional[str] = None  # the preset's name, recorded in the truth
    # Per categorical field: value of rank r (0-based) is drawn with probability proportional to
    # (r + 1 + offset) ** -exponent (Zipf-Mandelbrot; offset 0 is Zipf). None: `zipf`, offset 0.
    zipf_exponents: Optional[Sequence[float]] = None
    zipf_offsets: Optional[Sequence[float]] = None
    # Per field rates of empty values; None: _INT_MISSING / _CAT_MISSING.
    int_missing: Optional[Sequence[float]] = None
    cat_missing: Optional[Sequence[float]] = None
    # Tail drift across daily spans. The `drift_head` most frequent values of every field (the
    # truth's signal values among them) keep their ranks on every span; on span s the tail's ranks
    # move by s * drift_ranks[j] places through the field's other values, cyclically: each value
    # becomes drift_ranks[j] ranks rarer a day (old values fade) and values from the far end of the
    # tail, unseen so far, take the first tail ranks (new values appear). Span 0 has no shift.
    drift_head: Optional[int] = None
    drift_ranks: Optional[Sequence[int]] = None

    def to_dict(self):
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()
                if not (k in _OPTIONAL_KEYS and v is None)}

    def check(self) -> "GeneratorConfig":
        """Raises ValueError (one line naming the key) on a config that cannot be drawn from."""
        if len(self.vocab_sizes) != N_CAT:
            raise ValueError(f"vocab_sizes needs {N_CAT} entries, got {len(self.vocab_sizes)}")
        if any(int(n) < 1 for n in self.vocab_sizes):
            raise ValueError(f"vocab_sizes must be positive, got {list(self.vocab_sizes)}")
        for key, size in (("zipf_exponents", N_CAT), ("zipf_offsets", N_CAT), ("int_missing", N_INT),
                          ("cat_missing", N_CAT), ("drift_ranks", N_CAT)):
            values = getattr(self, key)
            if values is not None and len(values) != size:
                raise ValueError(f"{key} needs {size} entries, got {len(values)}")
            if values is not None and any(float(v) < 0 for v in values):
                raise ValueError(f"{key} must not be negative, got {list(values)}")
        for key in ("int_missing", "cat_missing"):
            if getattr(self, key) is not None and any(float(v) >= 1 for v in getattr(self, key)):
                raise ValueError(f"{key}: rates must be below 1, got {list(getattr(self, key))}")
        if (self.drift_ranks is None) != (self.drift_head is None):
            raise ValueError("drift_ranks and drift_head go together (both set or both None)")
        if self.drift_head is not None and self.drift_head < self.signal_top_k:
            raise ValueError(f"drift_head {self.drift_head} must keep the signal_top_k {self.signal_top_k} "
                             "values that may carry weight")
        return self

    def missing_rates(self):
        """(int field rates, categorical field rates)."""
        return (list(self.int_missing) if self.int_missing is not None else _INT_MISSING,
                list(self.cat_missing) if self.cat_missing is not None else _CAT_MISSING)


# Criteo (Kaggle Display Advertising Challenge, 45M rows over 7 days) has 8 fields with 1e5 to 1e7
# distinct values: C3 10.1M, C12 8.4M, C21 7.0M, C16 5.5M, C4 2.2M, C24 286k, C26 143k, C10 93k;
# the others have 3 to 15k. Here: field -> (values, Zipf exponent s, offset q). The eight large ones
# are Zipf-Mandelbrot profiles sized so that a 10M-row day (8M train rows after ExampleGen's 8:2
# split) keeps ~1.16M (field, value) pairs at or above the frequency threshold of 10 (~150k in each
# of the six largest, see `expected_vocabulary`) and sees ~10M distinct values in all, most of them
# rare. C24 keeps a plain Zipf head (offset 0): it is one of the truth's signal fields, whose weights
# sit on its 40 most frequent values. The other fields have Criteo's cardinalities and the default's
# exponent.
CRITEO_SCALE = {
    "C1": (1460, 1.1, 0), "C2": (583, 1.1, 0), "C3": (2_500_000, 1.0, 30000), "C4": (1_500_000, 1.1, 10000),
    "C5": (305, 1.1, 0), "C6": (24, 1.1, 0), "C7": (12517, 1.1, 0), "C8": (633, 1.1, 0), "C9": (3, 1.1, 0),
    "C10": (1_000_000, 1.1, 6000), "C11": (5683, 1.1, 0), "C12": (2_500_000, 1.0, 30000), "C13": (3194, 1.1, 0),
    "C14": (27, 1.1, 0), "C15": (14992, 1.1, 0), "C16": (2_000_000, 1.05, 15000), "C17": (10, 1.1, 0),
    "C18": (5652, 1.1, 0), "C19": (2173, 1.1, 0), "C20": (4, 1.1, 0), "C21": (2_000_000, 1.05, 15000),
    "C22": (18, 1.1, 0), "C23": (15, 1.1, 0), "C24": (1_000_000, 0.95, 0), "C25": (105, 1.1, 0),
    "C26": (1_000_000, 1.1, 6000),
}
# Missing rates measured on the 9,999 real Criteo rows under ../shared/data/criteo (wide-resdnn's
# 8,000 raw rows and kaggle-2014-criteo's 1,999; all from day 1), rounded to 3 decimals. In Criteo
# the fields missing at ~3.3% (C3, C4, C12, C16, C21, C24) are missing together in the same rows;
# here each field is missing independently at its rate.
CRITEO_INT_MISSING = [0.452, 0.0, 0.202, 0.209, 0.048, 0.25, 0.048, 0.001, 0.048, 0.452, 0.048, 0.774, 0.209]
CRITEO_CAT_MISSING = [0.0, 0.0, 0.033, 0.033, 0.0, 0.133, 0.0, 0.0, 0.0, 0.0, 0.0, 0.033, 0.0, 0.0, 0.0, 0.033,
                      0.0, 0.0, 0.449, 0.449, 0.033, 0.811, 0.0, 0.033, 0.449, 0.449]
# Tail drift of criteo-scale: the 1,000 most frequent values of each field stay; each tail moves by
# ~10% of its field's in-vocabulary values (at 10M rows) a day, 5% of the values of a field that
# is whole in the vocabulary.
CRITEO_DRIFT_HEAD = 1000
CRITEO_DRIFT_FRACTION = {"C3": 0.0065, "C12": 0.0065, "C16": 0.008, "C21": 0.008, "C4": 0.01, "C10": 0.015,
                         "C26": 0.009, "C24": 0.0075}

PRESETS = ("default", "criteo-scale")


def preset_config(name: str = "default", seed: int = 7) -> GeneratorConfig:
    """The GeneratorConfig of a preset (`PRESETS`) with the truth seeded by `seed`."""
    if name == "default":
        return GeneratorConfig(seed=seed)
    if name == "criteo-scale":
        sizes = [CRITEO_SCALE[f][0] for f in CAT_COLUMNS]
        drift = [int(round(n * CRITEO_DRIFT_FRACTION.get(f, 0.05))) if n > CRITEO_DRIFT_HEAD else 0
                 for f, n in zip(CAT_COLUMNS, sizes)]
        return GeneratorConfig(
            seed=seed, vocab_sizes=tuple(sizes), preset=name,
            zipf_exponents=tuple(float(CRITEO_SCALE[f][1]) for f in CAT_COLUMNS),
            zipf_offsets=tuple(float(CRITEO_SCALE[f][2]) for f in CAT_COLUMNS),
            int_missing=tuple(CRITEO_INT_MISSING), cat_missing=tuple(CRITEO_CAT_MISSING),
            drift_head=CRITEO_DRIFT_HEAD, drift_ranks=tuple(drift))
    raise ValueError(f"unknown generator preset {name!r} (known: {', '.join(PRESETS)})")


def value_string(field: str, index: int, seed: int) -> str:
    """Criteo-looking 8-hex-digit token for value `index` of `field`."""
    return hashlib.blake2b(f"{seed}:{field}:{index}".encode(), digest_size=4).hexdigest()


def _zipf_probs(n: int, s: float, offset: float = 0.0) -> np.ndarray:
    ranks = np.arange(1, n + 1, dtype=np.float64)
    p = 1.0 / (ranks + offset if offset else ranks) ** s
    return p / p.sum()


class _FieldDists:
    """Per categorical field: the cumulative distribution over ranks and the rank -> value map.

    A value is drawn as numpy's ``Generator.choice(n, p=p)`` draws it (one uniform, searched in the
    normalized cumulative sum of p), with the cumulative sums computed once instead of per call.
    """

    def __init__(self, cfg: GeneratorConfig):
        cfg.check()
        exponents = cfg.zipf_exponents or [cfg.zipf] * N_CAT
        offsets = cfg.zipf_offsets or [0.0] * N_CAT
        self.cdfs = []
        for n, s, q in zip(cfg.vocab_sizes, exponents, offsets):
            cdf = _zipf_probs(int(n), float(s), float(q)).cumsum()
            cdf /= cdf[-1]
            self.cdfs.append(cdf)
        self.sizes = [int(n) for n in cfg.vocab_sizes]
        self.head = cfg.drift_head or 0
        self.drift = list(cfg.drift_ranks) if cfg.drift_ranks is not None else [0] * N_CAT

    def draw(self, j: int, rng: np.random.Generator, rows: int, span: int = 0) -> np.ndarray:
        ranks = self.cdfs[j].searchsorted(rng.random(rows), side="right")
        return self.rank_to_value(j, ranks, span)

    def rank_to_value(self, j: int, ranks: np.ndarray, span: int) -> np.ndarray:
        """Value indices of field j's ranks on `span` (the identity on span 0 or without drift)."""
        n, head, shift = self.sizes[j], self.head, self.drift[j] * span
        tail = n - head
        if not shift or tail <= 0:
            return np.asarray(ranks, dtype=np.int64)
        ranks = np.asarray(ranks, dtype=np.int64)
        return np.where(ranks < head, ranks, head + (ranks - head - shift) % tail)


class _ValueStrings:
    """Field j's value strings (`value_string`). Up to EAGER_VALUES values: a list of them all. A
    larger field computes the strings of the values drawn so far only, as fixed-width bytes in one
    array (8 bytes a value; a Python string is ~57 bytes, and most of a large field's values are
    never drawn)."""

    EAGER_VALUES = 1 << 17

    def __init__(self, field: str, n: int, seed: int):
        self.field, self.seed = field, seed
        if n <= self.EAGER_VALUES:
            self.values = [value_string(field, i, seed) for i in range(n)] + [""]  # index -1 -> ""
        else:
            self.values = None
            self.strings = np.zeros(n, dtype="S8")
            self.known = np.zeros(n, dtype=bool)

    def column(self, idx: np.ndarray) -> List[str]:
        """The strings of value indices `idx`; index -1 (missing) is ""."""
        if self.values is not None:
            values = self.values
            return [values[i] for i in idx.tolist()]
        present = idx >= 0
        drawn = np.unique(idx[present])
        new = drawn[~self.known[drawn]]
        if new.size:
            self.strings[new] = [value_string(self.field, i, self.seed).encode() for i in new.tolist()]
            self.known[new] = True
        out = self.strings[np.where(present, idx, 0)].astype("U8")
        out[~present] = ""
        return out.tolist()


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


class BayesMetrics:
    """Bayes-optimal AUC and logloss of a set, accumulated chunk by chunk in constant memory.

    The AUC is `expected_auc` over a histogram of the true probabilities (AUC_BINS bins): pairs in
    one bin count one half, as ties do, so it differs from the exact value only by pairs of distinct
    probabilities less than 1/AUC_BINS apart (below 1e-10 on generated sets).
    """

    def __init__(self, bins: int = 1 << 18):
        self.bins = bins
        self.pos = np.zeros(bins)  # per bin: sum of p (positive weight)
        self.neg = np.zeros(bins)  # sum of 1 - p
        self.self_pairs = np.zeros(bins)  # sum of p * (1 - p): a row paired with itself
        self.rows = 0
        self.log_likelihood = 0.0

    def add(self, p: np.ndarray) -> None:
        idx = np.minimum((p * self.bins).astype(np.int64), self.bins - 1)
        self.pos += np.bincount(idx, weights=p, minlength=self.bins)
        self.neg += np.bincount(idx, weights=1.0 - p, minlength=self.bins)
        self.self_pairs += np.bincount(idx, weights=p * (1.0 - p), minlength=self.bins)
        eps = 1e-12
        self.log_likelihood += float(np.sum(p * np.log(p + eps) + (1 - p) * np.log(1 - p + eps)))
        self.rows += p.size

    def auc(self) -> float:
        neg_below = np.cumsum(self.neg) - self.neg
        num = float(np.sum(self.pos * neg_below) + 0.5 * np.sum(self.pos * self.neg - self.self_pairs))
        den = float(self.pos.sum() * self.neg.sum() - self.self_pairs.sum())
        return num / den if den > 0 else float("nan")  # one row: no pairs

    def logloss(self) -> float:
        return -self.log_likelihood / self.rows


def expected_vocabulary(cfg: GeneratorConfig, rows: int, threshold: int = 10,
                        train_fraction: float = 0.8) -> Dict[str, float]:
    """Expected number of values of each categorical field seen at least `threshold` times in the
    train split (`train_fraction` of `rows`): what Transform's vocabulary keeps.

    A value of probability p appears Binomial(n, p) ~ Poisson(n * p) times among the n train rows
    where its field is present, so the expectation is the sum over values of P(Poisson(n p) >=
    threshold). The same for every span (drift only renames the tail's values). Adds "total".
    """
    cfg.check()
    _, cat_missing = cfg.missing_rates()
    exponents = cfg.zipf_exponents or [cfg.zipf] * N_CAT
    offsets = cfg.zipf_offsets or [0.0] * N_CAT
    out: Dict[str, float] = {}
    for j, f in enumerate(CAT_COLUMNS):
        lam = rows * train_fraction * (1.0 - cat_missing[j]) * _zipf_probs(int(cfg.vocab_sizes[j]), exponents[j],
                                                                           offsets[j])
        term = np.exp(-lam)  # P(k = 0)
        below = term.copy()
        for k in range(1, threshold):  # P(k < threshold), term by term
            term = term * lam / k
            below += term
        out[f] = float(np.sum(1.0 - below))
    out["total"] = float(sum(out.values()))
    return out


def make_truth(cfg: GeneratorConfig, dists: Optional[_FieldDists] = None) -> Dict:
    rng = np.random.default_rng([cfg.seed, 0])
    cfg.check()
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
    pilot = _sample(cfg, _OneGenerator(np.random.default_rng([cfg.seed, 1])), 20000, dists)
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


def _int_lognormal(j: int):
    """(mu, sigma) of the log of integer column j."""
    return 1.0 + (j % 5) * 0.6, 1.0 + (j % 3) * 0.4


class _BoundedInts:
    """The values of one ``Generator.integers(low, high, size=N)`` call, taken in pieces.

    numpy draws them from 32-bit halves of 64-bit words (low half first), rejecting by Lemire's
    method, and drops the unused half of the last word when the call returns. Here the halves carry
    over between pieces, so the pieces together equal the one call and use the same words.
    """

    def __init__(self, rng: np.random.Generator, low: int, high: int):
        span = high - low  # numpy's rng_excl
        if not 1 < span < 1 << 32:
            raise ValueError(f"integers in [{low}, {high}) are not drawn from 32-bit halves")
        self.bitgen, self.low, self.span = rng.bit_generator, low, np.uint64(span)
        self.threshold = np.uint64(((1 << 32) - span) % span)  # (UINT32_MAX - rng) % rng_excl
        self.halves = np.zeros(0, dtype=np.uint64)

    def __call__(self, n: int) -> np.ndarray:
        m = self.halves * self.span
        accepted = (m & np.uint64(0xFFFFFFFF)) >= self.threshold
        while np.count_nonzero(accepted) < n:
            words = self.bitgen.random_raw((n - int(np.count_nonzero(accepted)) + 1) // 2)
            halves = np.stack([words & np.uint64(0xFFFFFFFF), words >> np.uint64(32)], axis=1).reshape(-1)
            self.halves = np.concatenate([self.halves, halves])
            m = self.halves * self.span
            accepted = (m & np.uint64(0xFFFFFFFF)) >= self.threshold
        used = np.flatnonzero(accepted)[:n]
        end = used[-1] + 1 if n else 0
        values = self.low + (m[used] >> np.uint64(32)).astype(np.int64)
        self.halves = self.halves[end:]
        return values


class _OneGenerator:
    """Every draw from one generator, in the order `_sample` makes them (the pilot sample)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.negative_values = _BoundedInts(rng, 1, 4)

    def __getitem__(self, key) -> np.random.Generator:
        return self.rng


class _ColumnStreams:
    """The draws of a set's rows, one generator per column stream, so that rows come in chunks.

    A set's rows are drawn from one generator column after column, as they always were: all of I1's
    values, then its missing mask, ..., all of C26, then the labels. A first pass finds the
    generator's state at the start of each of those streams: uniform draws (masks, categorical
    values, labels: one 64-bit word each) are skipped in O(1); the normal draws and I2's negative
    values, whose word counts vary, are drawn and dropped chunk by chunk. Each stream then gets its
    own generator from that state. numpy fills each of these draws element by element, so the rows
    are the same for every chunk size and the same as drawing each column whole.
    """

    def __init__(self, cfg: GeneratorConfig, rng: np.random.Generator, rows: int, chunk_rows: int):
        bitgen, self.states = rng.bit_generator, {}
        for j, f in enumerate(INT_COLUMNS):  # the order of _sample's draws
            self.states[f, "value"] = bitgen.state
            for n in _chunks(rows, chunk_rows):
                rng.normal(*_int_lognormal(j), size=n)
            if f == "I2":
                self.states[f, "negative"] = bitgen.state
                negatives = sum(int(np.count_nonzero(rng.random(n) < cfg.negative_int_rate))
                                for n in _chunks(rows, chunk_rows))
                self.states[f, "negative_value"] = bitgen.state
                drain = _BoundedInts(rng, 1, 4)
                for n in _chunks(negatives, chunk_rows):
                    drain(n)
            self.states[f, "missing"] = bitgen.state
            bitgen.advance(rows)
        for f in CAT_COLUMNS:
            self.states[f, "value"] = bitgen.state
            bitgen.advance(rows)  # Generator.choice(p=...) draws one uniform per value
            self.states[f, "missing"] = bitgen.state
            bitgen.advance(rows)
        self.states["label"] = bitgen.state
        self.generators: Dict = {}
        self.negative_values = _BoundedInts(self["I2", "negative_value"], 1, 4)

    def __getitem__(self, key) -> np.random.Generator:
        if key not in self.generators:
            bitgen = np.random.PCG64()
            bitgen.state = self.states[key]
            self.generators[key] = np.random.Generator(bitgen)
        return self.generators[key]


def _chunks(total: int, size: int):
    for start in range(0, total, size):
        yield min(size, total - start)


def _sample(cfg: GeneratorConfig, draws, rows: int, dists: Optional[_FieldDists] = None, span: int = 0) -> Dict:
    """`rows` rows of ints and categorical indices; `draws[column, stream]` is the generator of each
    stream (a `_ColumnStreams`, or a `_OneGenerator` for one generator drawing column by column).
    `span` places the tails of drifting fields (`GeneratorConfig.drift_ranks`)."""
    dists = dists or _FieldDists(cfg)
    int_missing, cat_missing = cfg.missing_rates()
    ints, int_t, cat_idx = {}, {}, {}
    for j, f in enumerate(INT_COLUMNS):
        log_x = draws[f, "value"].normal(*_int_lognormal(j), size=rows)
        x = np.maximum(np.floor(np.exp(log_x)).astype(np.int64) - 1, 0)
        if f == "I2":
            neg = draws[f, "negative"].random(rows) < cfg.negative_int_rate
            x[neg] = -draws.negative_values(int(neg.sum()))
        missing = draws[f, "missing"].random(rows) < int_missing[j]
        ints[f] = np.where(missing, np.iinfo(np.int64).min, x)
        int_t[f] = np.where(missing, 0.0, np.log1p(np.maximum(x, 0)))
    for j, f in enumerate(CAT_COLUMNS):
        idx = dists.draw(j, draws[f, "value"], rows, span)  # = Generator.choice(n, p=zipf), drifted
        missing = draws[f, "missing"].random(rows) < cat_missing[j]
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


def _tsv_lines(sample: Dict, labels: np.ndarray, vocabs: Sequence) -> str:
    """The rows as TSV lines; `vocabs[j]` is C<j+1>'s `_ValueStrings`, or a list of its value strings
    with "" last (missing)."""
    cols: List[List[str]] = [[str(v) for v in labels.tolist()]]
    missing_int = np.iinfo(np.int64).min
    for f in INT_COLUMNS:
        cols.append(["" if v == missing_int else str(v) for v in sample["ints"][f].tolist()])
    for j, f in enumerate(CAT_COLUMNS):
        vocab = vocabs[j]
        if isinstance(vocab, _ValueStrings):
            cols.append(vocab.column(sample["cat_idx"][f]))
        else:
            cols.append([vocab[i] for i in sample["cat_idx"][f].tolist()])  # index -1 -> "" (missing)
    return "".join("\t".join(r) + "\n" for r in zip(*cols))


CHUNK_ROWS = 20000  # rows drawn, scored and written at a time: memory does not grow with the set
BYTES_PER_ROW = 240  # a generated line averages ~244 bytes: the disk space check before writing


def _check_disk_space(path: str, rows: int) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.isdir(existing):  # the folder is made only once the set fits
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free + (os.path.getsize(path) if os.path.isfile(path) else 0)
    if rows * BYTES_PER_ROW > free:
        raise ValueError(f"rows {rows}: the click-log file would take about {rows * BYTES_PER_ROW / 1e9:,.1f} GB, "
                         f"more than the {free / 1e9:,.1f} GB free under {folder}")


def generate(out_dir: str, rows: int, cfg: Optional[GeneratorConfig] = None, span: int = 0,
             truth_path: Optional[str] = None, chunk_rows: int = CHUNK_ROWS) -> Dict:
    """Write `rows` click-log lines to `out_dir/clicks-<span>.tsv` and the truth beside `out_dir`.

    The truth goes to `truth_path` (default: `<out_dir>/../ground_truth.json`, outside the data
    folder so that ExampleGen never reads it). Returns a report with the set's Bayes-optimal metrics.
    Rows are drawn and written `chunk_rows` at a time (the file does not depend on it).
    """
    cfg = (cfg or GeneratorConfig()).check()
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows <= 0:
        raise ValueError(f"rows must be a positive integer, got {rows!r}")
    data_path = os.path.join(out_dir, f"clicks-{span:05d}.tsv")
    _check_disk_space(data_path, rows)
    os.makedirs(out_dir, exist_ok=True)
    truth_path = truth_path or os.path.join(os.path.dirname(os.path.abspath(out_dir)), "ground_truth.json")
    dists = _FieldDists(cfg)
    truth = make_truth(cfg, dists)
    draws = _ColumnStreams(cfg, np.random.default_rng([cfg.seed, 2, span]), rows, chunk_rows)
    vocabs = [_ValueStrings(f, cfg.vocab_sizes[j], cfg.seed) for j, f in enumerate(CAT_COLUMNS)]
    metrics, clicks = BayesMetrics(), 0
    with open(data_path, "w", encoding="utf-8") as out:
        for n in _chunks(rows, chunk_rows):
            sample = _sample(cfg, draws, n, dists, span)
            p = _sigmoid(_logits(truth, sample))
            labels = (draws["label"].random(n) < p).astype(np.int64)
            out.write(_tsv_lines(sample, labels, vocabs))
            metrics.add(p)
            clicks += int(labels.sum())
    report = {
        "path": data_path,
        "rows": rows,
        "span": span,
        "ctr": clicks / rows,
        "bayes_auc": metrics.auc(),
        "bayes_logloss": metrics.logloss(),
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
