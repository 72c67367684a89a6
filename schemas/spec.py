"""Dataset specs: the single source of truth for columns, types, ranges and tasks.

A spec is a YAML file under ``schemas/specs/``. It may ``extend`` a base file (the census groups
share one description of the raw UCI columns). Loading validates the file and returns a frozen
:class:`DatasetSpec`; everything else (Spark schemas, the GX suite, the model's input layout, the
output tables) is derived from it. This module is pure Python: no Spark, no torch.
"""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Union

import yaml

# A directory, or a folder inside a zip when the project is shipped with --py-files (importlib
# resources read both; a plain Path would not find the specs inside a zip).
SPEC_DIR = importlib.resources.files("schemas") / "specs"

KeyDtype = Literal["long", "string"]
DenseDtype = Literal["double", "long"]
CatDtype = Literal["string", "long"]
Normalize = Literal["standard", "log1p_standard", "none"]
Encoding = Literal["raw", "quantile", "pwl"]
OovPolicy = Literal["bucket", "quarantine"]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
RESERVED = {"ds", "model_version", "scored_at", "reason", "task", "segment", "metric", "value", "n"}


class SpecError(ValueError):
    """A dataset spec is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class KeyColumn:
    name: str
    dtype: KeyDtype


@dataclass(frozen=True)
class DenseFeature:
    """A numeric model input. ``min``/``max`` bound valid values (inclusive); nulls are allowed up
    to ``max_null_fraction`` of a partition and are replaced by ``fill`` before normalisation.

    ``encoding`` says how the model sees the value: ``raw`` (one normalised number), ``quantile``
    (the index of its quantile bin, ``bins`` bins, looked up in an ``embedding_dim`` embedding),
    ``pwl`` (piecewise-linear encoding, Gorishniy et al. 2022: ``bins`` numbers in [0, 1]). Bin
    edges are fitted on the training data and stored in the model artifact. ``group`` names a
    field group that field-split experts can read (``ModelConfig.expert_layout``)."""

    name: str
    dtype: DenseDtype = "double"
    min: float | None = None
    max: float | None = None
    max_null_fraction: float = 0.0
    fill: float = 0.0
    normalize: Normalize = "standard"
    encoding: Encoding = "raw"
    bins: int = 16
    embedding_dim: int = 4
    group: str | None = None
    kind: Literal["dense"] = "dense"

    @property
    def width(self) -> int:
        """Dense columns this feature takes in the model input (quantile: none, an index)."""
        return {"raw": 1, "pwl": self.bins, "quantile": 0}[self.encoding]


@dataclass(frozen=True)
class CategoricalFeature:
    """A categorical model input, either a closed ``vocabulary`` or ``hash_buckets``.

    Index 0 of the embedding is reserved for null / out-of-vocabulary values. ``oov`` says what
    validation does with a value outside the vocabulary: ``bucket`` lets the row through (the
    model sees index 0) as long as at most ``max_oov_fraction`` of rows do, ``quarantine`` sends
    the row to the quarantine table.
    """

    name: str
    dtype: CatDtype = "string"
    vocabulary: tuple[str, ...] | None = None
    hash_buckets: int | None = None
    oov: OovPolicy = "bucket"
    max_oov_fraction: float = 0.01
    max_null_fraction: float = 0.0
    embedding_dim: int = 4
    group: str | None = None
    kind: Literal["categorical"] = "categorical"

    @property
    def cardinality(self) -> int:
        """Rows of the embedding table, including the reserved index 0."""
        if self.vocabulary is not None:
            return len(self.vocabulary) + 1
        assert self.hash_buckets is not None  # guaranteed by _parse_categorical
        return self.hash_buckets


Feature = Union[DenseFeature, CategoricalFeature]


@dataclass(frozen=True)
class Task:
    """A binary task. For ingested data sets, ``source`` is the raw column the label is derived
    from and ``positive`` the raw values that mean 1."""

    name: str
    description: str = ""
    source: str | None = None
    positive: tuple[str, ...] = ()
    parent: str | None = None   # observed only after the parent task's positive (conversion: click)


@dataclass(frozen=True)
class Attribute:
    """A column stored in the features table that is never a model input (ids, weights)."""

    name: str
    dtype: Literal["long", "string", "double"]


@dataclass(frozen=True)
class RowCountPolicy:
    """Bounds on a partition's row count, relative to the median of the trailing partitions."""

    min_rows: int = 1
    min_ratio_to_median: float = 0.5
    max_ratio_to_median: float = 2.0
    trailing_partitions: int = 7


@dataclass(frozen=True)
class CatalogSpec:
    """How catalog mode builds (user, item) candidates: the user and item id columns, the
    item column that ranks the catalog when only the top items are crossed with users, and
    which feature columns the users table and the items table carry (``user_features`` /
    ``item_features``; empty: the feature columns each table has). Features on neither side are
    context (null in catalog mode)."""

    user_key: str
    item_key: str
    rank_by: str
    user_features: tuple[str, ...] = ()
    item_features: tuple[str, ...] = ()
    category: str | None = None   # the item column intra-list diversity is measured over

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_features", tuple(self.user_features))
        object.__setattr__(self, "item_features", tuple(self.item_features))


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    keys: tuple[KeyColumn, ...]
    features: tuple[Feature, ...]
    tasks: tuple[Task, ...]
    attributes: tuple[Attribute, ...] = ()
    segments: tuple[str, ...] = ()
    user_column: str | None = None
    request_column: str | None = None   # the ranking metrics' list: one request's impressions
    catalog: CatalogSpec | None = None
    row_count: RowCountPolicy = field(default_factory=RowCountPolicy)
    source: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @cached_property
    def dense_features(self) -> tuple[DenseFeature, ...]:
        return tuple(f for f in self.features if isinstance(f, DenseFeature))

    @cached_property
    def categorical_features(self) -> tuple[CategoricalFeature, ...]:
        return tuple(f for f in self.features if isinstance(f, CategoricalFeature))

    @property
    def key_names(self) -> list[str]:
        return [k.name for k in self.keys]

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def conditional_tasks(self) -> list[tuple[str, str]]:
        """(parent, child) for every task observed only after its parent's positive."""
        return [(t.parent, t.name) for t in self.tasks if t.parent is not None]

    @staticmethod
    def joint_task(parent: str, child: str) -> str:
        """The joint task of a conditional pair: both happened (``click_and_conversion``)."""
        return f"{parent}_and_{child}"

    @property
    def reported_tasks(self) -> list[str]:
        """The tasks evaluate and compare report: the spec's, then each conditional pair's joint
        task."""
        return self.task_names + [self.joint_task(p, c) for p, c in self.conditional_tasks]

    @property
    def features_table_columns(self) -> list[str]:
        """Columns of the features table, in order: keys, features, attributes."""
        return self.key_names + self.feature_names + [a.name for a in self.attributes]

    @property
    def labels_table_columns(self) -> list[str]:
        return self.key_names + self.task_names

    @staticmethod
    def prediction_column(task: str) -> str:
        return f"p_{task}"

    @property
    def prediction_columns(self) -> list[str]:
        return [self.prediction_column(t) for t in self.task_names]

    def column(self, name: str) -> KeyColumn | Feature | Attribute:
        for col in (*self.keys, *self.features, *self.attributes):
            if col.name == name:
                return col
        raise SpecError(f"{self.name}: no column {name!r}")


# --------------------------------------------------------------------------------------------
# Loading


def available_specs() -> list[str]:
    """Names of the dataset specs shipped with the project (files not starting with '_')."""
    return sorted(p.name[: -len(".yaml")] for p in SPEC_DIR.iterdir()
                  if p.name.endswith(".yaml") and not p.name.startswith("_"))


def load_spec(name_or_path: str | Path) -> DatasetSpec:
    """Load and validate a spec by dataset name (``census-group1``) or by file path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = SPEC_DIR / f"{name_or_path}.yaml"  # type: ignore[assignment] - a Traversable
        if not path.exists():
            raise SpecError(
                f"unknown dataset {name_or_path!r}; known: {', '.join(available_specs())}"
            )
    raw = _read_with_bases(path)
    return parse_spec(raw, origin=str(path))


def _read_with_bases(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read spec {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: a spec must be a mapping")
    base_name = doc.pop("extends", None)
    if base_name is None:
        return doc
    base = _read_with_bases(path.parent / base_name)
    return _merge(base, doc)


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Child keys replace base keys, except ``exclude`` which removes base columns by name."""
    merged = {**base, **child}
    excluded = set(child.get("exclude", [])) | set(base.get("exclude", []))
    merged["exclude"] = sorted(excluded)
    return merged


def parse_spec(raw: dict[str, Any], origin: str = "<dict>") -> DatasetSpec:
    """Validate a spec dictionary (as read from YAML) and build the :class:`DatasetSpec`."""
    try:
        return _parse(raw)
    except SpecError as exc:
        raise SpecError(f"{origin}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise SpecError(f"{origin}: malformed spec ({type(exc).__name__}: {exc})") from None


_TOP_LEVEL = {
    "name", "description", "keys", "features", "tasks", "attributes", "segments", "user_column",
    "request_column", "row_count", "source", "exclude", "catalog",
}


def _parse(raw: dict[str, Any]) -> DatasetSpec:
    unknown = set(raw) - _TOP_LEVEL
    if unknown:
        raise SpecError(f"unknown top-level field(s): {sorted(unknown)}")
    for required in ("name", "keys", "features", "tasks"):
        if required not in raw:
            raise SpecError(f"missing required field {required!r}")
    tasks = tuple(_parse_task(t) for t in raw["tasks"])
    excluded = set(raw.get("exclude", [])) | {t.source for t in tasks if t.source}
    features = tuple(_parse_feature(f) for f in raw["features"] if f["name"] not in excluded)
    spec = DatasetSpec(
        name=str(raw["name"]),
        description=str(raw.get("description", "")),
        keys=tuple(KeyColumn(k["name"], _choice(k.get("dtype", "long"), ("long", "string"), "key dtype"))
                   for k in raw["keys"]),
        features=features,
        tasks=tasks,
        attributes=tuple(Attribute(a["name"], a.get("dtype", "string"))
                         for a in raw.get("attributes", []) if a["name"] not in excluded),
        segments=tuple(raw.get("segments", [])),
        user_column=raw.get("user_column"),
        request_column=raw.get("request_column"),
        catalog=CatalogSpec(**raw["catalog"]) if raw.get("catalog") else None,
        row_count=RowCountPolicy(**raw.get("row_count", {})),
        source=dict(raw.get("source", {})),
    )
    _check_consistency(spec)
    return spec


def _choice(value: Any, allowed: tuple[str, ...], what: str) -> Any:
    if value not in allowed:
        raise SpecError(f"{what} must be one of {list(allowed)}, got {value!r}")
    return value


def _parse_task(raw: dict[str, Any]) -> Task:
    return Task(
        name=raw["name"],
        description=raw.get("description", ""),
        source=raw.get("source"),
        positive=tuple(str(v) for v in raw.get("positive", ())),
        parent=raw.get("parent"),
    )


_DENSE_FIELDS = {"name", "kind", "dtype", "min", "max", "max_null_fraction", "fill", "normalize",
                 "encoding", "bins", "embedding_dim", "group"}
_CAT_FIELDS = {"name", "kind", "dtype", "vocabulary", "hash_buckets", "oov", "max_oov_fraction",
               "max_null_fraction", "embedding_dim", "group"}
MAX_BINS = 1024


def _group(raw: dict[str, Any], name: str) -> str | None:
    group = raw.get("group")
    if group is not None and (not isinstance(group, str) or not _NAME.match(group)):
        raise SpecError(f"feature {name!r}: group must match [a-z][a-z0-9_]*, got {group!r}")
    return group


def _positive_int(raw: dict[str, Any], key: str, default: int, name: str, lo: int,
                  hi: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SpecError(f"feature {name!r}: {key} must be an integer within [{lo}, {hi}], "
                        f"got {value!r}")
    return value


def _parse_feature(raw: dict[str, Any]) -> Feature:
    name = raw.get("name", "<unnamed>")
    kind = raw.get("kind")
    if kind == "dense":
        _no_unknown_fields(raw, _DENSE_FIELDS, name)
        feat = DenseFeature(
            name=name,
            dtype=_choice(raw.get("dtype", "double"), ("double", "long"), f"{name}.dtype"),
            min=_opt_float(raw.get("min")),
            max=_opt_float(raw.get("max")),
            max_null_fraction=float(raw.get("max_null_fraction", 0.0)),
            fill=float(raw.get("fill", 0.0)),
            normalize=_choice(raw.get("normalize", "standard"),
                              ("standard", "log1p_standard", "none"), f"{name}.normalize"),
            encoding=_choice(raw.get("encoding", "raw"), ("raw", "quantile", "pwl"),
                             f"{name}.encoding"),
            bins=_positive_int(raw, "bins", 16, name, 2, MAX_BINS),
            embedding_dim=_positive_int(raw, "embedding_dim", 4, name, 1, 1024),
            group=_group(raw, name),
        )
        if feat.min is not None and feat.max is not None and feat.min > feat.max:
            raise SpecError(f"feature {name!r}: min {feat.min} > max {feat.max}")
        if feat.normalize == "log1p_standard" and (feat.min is None or feat.min < 0):
            raise SpecError(f"feature {name!r}: log1p_standard needs min >= 0")
        _check_fraction(feat.max_null_fraction, f"{name}.max_null_fraction")
        return feat
    if kind == "categorical":
        _no_unknown_fields(raw, _CAT_FIELDS, name)
        vocab = raw.get("vocabulary")
        buckets = raw.get("hash_buckets")
        if (vocab is None) == (buckets is None):
            raise SpecError(f"categorical {name!r}: give exactly one of vocabulary, hash_buckets")
        if vocab is not None:
            vocab = tuple(str(v) for v in vocab)
            if len(set(vocab)) != len(vocab):
                raise SpecError(f"categorical {name!r}: duplicate vocabulary entries")
            if not vocab:
                raise SpecError(f"categorical {name!r}: empty vocabulary")
        if buckets is not None and (not isinstance(buckets, int) or buckets < 2):
            raise SpecError(f"categorical {name!r}: hash_buckets must be an integer >= 2")
        feat = CategoricalFeature(
            name=name,
            dtype=_choice(raw.get("dtype", "string"), ("string", "long"), f"{name}.dtype"),
            vocabulary=vocab,
            hash_buckets=buckets,
            oov=_choice(raw.get("oov", "bucket"), ("bucket", "quarantine"), f"{name}.oov"),
            max_oov_fraction=float(raw.get("max_oov_fraction", 0.01)),
            max_null_fraction=float(raw.get("max_null_fraction", 0.0)),
            embedding_dim=int(raw.get("embedding_dim", 4)),
            group=_group(raw, name),
        )
        _check_fraction(feat.max_null_fraction, f"{name}.max_null_fraction")
        _check_fraction(feat.max_oov_fraction, f"{name}.max_oov_fraction")
        return feat
    raise SpecError(f"feature {name!r}: kind must be 'dense' or 'categorical', got {kind!r}")


def _no_unknown_fields(raw: dict[str, Any], allowed: set[str], name: str) -> None:
    unknown = set(raw) - allowed
    if unknown:
        raise SpecError(f"feature {name!r}: unknown field(s) {sorted(unknown)}")


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _check_fraction(value: float, what: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise SpecError(f"{what} must be within [0, 1], got {value}")


def _check_consistency(spec: DatasetSpec) -> None:
    if not spec.keys:
        raise SpecError("at least one key column is required")
    if not spec.features:
        raise SpecError("at least one feature is required")
    if not spec.tasks:
        raise SpecError("at least one task is required")
    names = spec.features_table_columns + spec.task_names
    seen: set[str] = set()
    for name in names:
        if not _NAME.match(name):
            raise SpecError(f"column name {name!r} must be snake_case ([a-z][a-z0-9_]*)")
        if name in RESERVED:
            raise SpecError(f"column name {name!r} is reserved")
        if name in seen:
            raise SpecError(f"column {name!r} is defined twice")
        seen.add(name)
    feature_names = {f.name for f in spec.features}
    for f in spec.features:
        if f.group is not None and f.group in feature_names and f.group != f.name:
            raise SpecError(f"feature {f.name!r}: group {f.group!r} is also a feature's name; "
                            "field-split experts could not tell them apart")
    table_columns = set(spec.features_table_columns)
    for seg in spec.segments:
        if seg not in table_columns:
            raise SpecError(f"segment column {seg!r} is not a column of the features table")
    if spec.user_column is not None and spec.user_column not in table_columns:
        raise SpecError(f"user_column {spec.user_column!r} is not a column of the features table")
    if spec.request_column is not None and spec.request_column not in table_columns:
        raise SpecError(f"request_column {spec.request_column!r} is not a column of the features "
                        f"table")
    names = set(spec.task_names)
    for t in spec.tasks:
        if t.parent is not None and (t.parent not in names or t.parent == t.name):
            raise SpecError(f"task {t.name!r}: parent {t.parent!r} is not another task of the spec")
    if spec.catalog is not None:
        for role in ("user_key", "item_key", "rank_by", "category"):
            column = getattr(spec.catalog, role)
            if column is not None and column not in table_columns:
                raise SpecError(f"catalog.{role} {column!r} is not a column of the features table")
        features = set(spec.feature_names)
        for role in ("user_features", "item_features"):
            for column in getattr(spec.catalog, role):
                if column not in features:
                    raise SpecError(f"catalog.{role}: {column!r} is not a feature of the spec")
        both = set(spec.catalog.user_features) & set(spec.catalog.item_features)
        if both:
            raise SpecError(f"catalog: {sorted(both)} listed as both user and item features")
