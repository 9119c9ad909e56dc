"""Dataset specs: how one click-log layout maps onto tf.Example features.

A spec names every column of a line in file order and what it is:

* ``label``       -- the click, 0 or 1; emitted as an int64 feature under the column's name.
* ``int``         -- an integer count; emitted as int64, absent when the field is empty.
* ``categorical`` -- an opaque string; emitted as bytes, absent when the field is empty.
* ``ignore``      -- read and checked for presence only (an ``Id`` column, say); not emitted.

Categorical columns say how Transform turns them into ids: ``vocab`` (a vocabulary with a frequency
threshold, values under it share the OOV ids) or ``hash`` (``hash_buckets`` buckets, for very high
cardinality). Every categorical field gets its own id range, so one embedding row is exactly one
(field, value) pair.

Specs are YAML or JSON files; the built-in ones live in ``components/specs/`` and are named by file
stem (``criteo``, ``criteo-kaggle``, ``avazu``).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import yaml

SPECS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "specs")

KINDS = ("label", "int", "categorical", "ignore")
ENCODINGS = ("vocab", "hash")
# What a derived column may compute from its source column (implemented by the ExampleGen's parser,
# components/click_log_example_gen/parsing.py): YYMMDDHH -> "00".."23" and -> "Mon".."Sun".
DERIVATIONS = ("hour_of_day", "weekday")


class SpecError(ValueError):
    """A dataset spec that cannot be used; the message names the file and the field."""


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    kind: str
    # int columns: values written as floats ("260.0") are accepted when they are whole numbers.
    allow_float_format: bool = False
    # categorical columns only
    encoding: str = "vocab"
    hash_buckets: int = 0
    # derived columns (computed from another column by the ExampleGen's parser, e.g. Avazu's hour)
    derived_from: Optional[str] = None
    derive: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, False, 0, "vocab")
                or k in ("name", "kind")}


VOCABULARY_COUNTERS = ("numpy", "tft")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    columns: Tuple[Column, ...]
    delimiter: str = "\t"
    header: bool = False
    # Transform settings shared by all categorical vocab fields (Criteo convention: < 10 -> OOV).
    frequency_threshold: int = 10
    num_oov_buckets: int = 1
    # > 0: Transform also gives each int field quantile-bucket ids (`<field>_bucket`, one analyzer
    # pass for all fields), embedded like a categorical field.
    quantile_buckets: int = 0
    # Who counts the categorical vocabulary: "numpy" (components/frequent_values.py, columnar counts
    # in one combiner) or "tft" (tft.vocabulary, one Beam key per distinct token: 2-3x slower on a
    # long tail, docs/ingestion.md). Both write the same file.
    vocabulary_counter: str = "numpy"
    max_line_bytes: int = 1 << 16

    # -- derived views ---------------------------------------------------------------------------
    @property
    def file_columns(self) -> Tuple[Column, ...]:
        """Columns physically present in each line, in file order."""
        return tuple(c for c in self.columns if c.derived_from is None)

    @property
    def label(self) -> str:
        return next(c.name for c in self.columns if c.kind == "label")

    @property
    def int_columns(self) -> Tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.kind == "int")

    @property
    def categorical_columns(self) -> Tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.kind == "categorical")

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    # -- (de)serialisation: specs travel to Transform and Trainer as custom_config JSON -----------
    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "delimiter": self.delimiter,
            "header": self.header,
            "frequency_threshold": self.frequency_threshold,
            "num_oov_buckets": self.num_oov_buckets,
            "quantile_buckets": self.quantile_buckets,
            "vocabulary_counter": self.vocabulary_counter,
            "max_line_bytes": self.max_line_bytes,
            "columns": [c.to_dict() for c in self.columns],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], source: str = "<dict>") -> "DatasetSpec":
        if not isinstance(d, dict):
            raise SpecError(f"{source}: a dataset spec must be a mapping, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise SpecError(f"{source}: unknown spec keys {sorted(unknown)}")
        raw_columns = d.get("columns")
        if not raw_columns:
            raise SpecError(f"{source}: 'columns' is missing or empty")
        columns: List[Column] = []
        column_keys = {f.name for f in dataclasses.fields(Column)}
        for i, rc in enumerate(raw_columns):
            if not isinstance(rc, dict) or "name" not in rc or "kind" not in rc:
                raise SpecError(f"{source}: column #{i} needs 'name' and 'kind'")
            bad = set(rc) - column_keys
            if bad:
                raise SpecError(f"{source}: column {rc['name']!r} has unknown keys {sorted(bad)}")
            col = Column(**rc)
            if col.kind not in KINDS:
                raise SpecError(f"{source}: column {col.name!r} kind {col.kind!r} not in {KINDS}")
            if col.encoding not in ENCODINGS:
                raise SpecError(f"{source}: column {col.name!r} encoding {col.encoding!r} not in {ENCODINGS}")
            if col.encoding == "hash" and col.hash_buckets <= 0:
                raise SpecError(f"{source}: column {col.name!r} uses hash encoding without hash_buckets > 0")
            columns.append(col)
        names = [c.name for c in columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SpecError(f"{source}: duplicate column names {dupes}")
        if sum(c.kind == "label" for c in columns) != 1:
            raise SpecError(f"{source}: exactly one column must have kind 'label'")
        by_name = {c.name: c for c in columns}
        for c in columns:
            if (c.derived_from is None) != (c.derive is None):
                raise SpecError(f"{source}: column {c.name!r} needs both 'derived_from' and 'derive' or neither")
            if c.derived_from is None:
                continue
            if c.derived_from not in names:
                raise SpecError(f"{source}: column {c.name!r} derives from unknown column {c.derived_from!r}")
            if by_name[c.derived_from].derived_from is not None:
                raise SpecError(f"{source}: column {c.name!r} derives from another derived column")
            if c.derive not in DERIVATIONS:
                raise SpecError(f"{source}: column {c.name!r} derive {c.derive!r} not in {DERIVATIONS}")
            if c.kind not in ("int", "categorical"):
                raise SpecError(f"{source}: derived column {c.name!r} must be 'int' or 'categorical'")
        delimiter = d.get("delimiter", "\t")
        if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\r\n":
            raise SpecError(f"{source}: delimiter must be one character other than CR/LF, got {delimiter!r}")
        max_line_bytes = d.get("max_line_bytes", 1 << 16)
        if not isinstance(max_line_bytes, int) or max_line_bytes <= 0:
            raise SpecError(f"{source}: max_line_bytes must be a positive integer, got {max_line_bytes!r}")
        if d.get("vocabulary_counter", cls.vocabulary_counter) not in VOCABULARY_COUNTERS:
            raise SpecError(f"{source}: vocabulary_counter must be one of {', '.join(VOCABULARY_COUNTERS)}, "
                            f"got {d['vocabulary_counter']!r}")
        kwargs = {k: v for k, v in d.items() if k != "columns"}
        kwargs.setdefault("name", os.path.splitext(os.path.basename(source))[0])
        return cls(columns=tuple(columns), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "DatasetSpec":
        return cls.from_dict(json.loads(text), source="<json>")


def builtin_spec_names() -> List[str]:
    return sorted(os.path.splitext(f)[0] for f in os.listdir(SPECS_DIR) if f.endswith((".yaml", ".yml", ".json")))


def load_spec(name_or_path: str) -> DatasetSpec:
    """A built-in spec by name (``criteo``) or a spec file by path (YAML or JSON)."""
    path = name_or_path
    if not os.path.exists(path):
        for ext in (".yaml", ".yml", ".json"):
            candidate = os.path.join(SPECS_DIR, name_or_path + ext)
            if os.path.exists(candidate):
                path = candidate
                break
        else:
            raise SpecError(
                f"{name_or_path}: no such spec file and not a built-in format "
                f"(built-in: {', '.join(builtin_spec_names())})")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)  # YAML is a superset of JSON
    except (OSError, yaml.YAMLError) as e:
        raise SpecError(f"{path}: cannot read spec: {e}".splitlines()[0]) from None
    return DatasetSpec.from_dict(data, source=path)
