"""The typed job config: one YAML file, defaults embedded, overridable from the CLI / env."""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from jobs.core.errors import ConfigError, InputError
from jobs.core.metric_registry import COMPARED, is_ranking
from jobs.core.metric_registry import metric as registry_metric
from jobs.core.slices import slice_name
from jobs.core.warehouse import local_path
from mmoe_model.config import ModelConfig, TrainConfig
from mmoe_model.errors import ModelConfigError
from mmoe_model.precision import PRECISIONS

# importlib resources: also found inside a --py-files zip (tests/test_cluster.py)
DEFAULT_CONFIG = importlib.resources.files("jobs.core") / "default_config.yaml"


@dataclass
class SparkConfig:
    master: str = "local[*]"
    app_name: str = "mmoe"
    remote: str | None = None  # sc://HOST:PORT: a Spark Connect server (then master is not used)
    conf: dict[str, str] = field(default_factory=dict)


@dataclass
class ValidationConfig:
    on_bad_rows: Literal["quarantine", "fail"] = "quarantine"
    max_bad_row_fraction: float = 0.05
    keep_data_docs: bool = True
    on_extra_columns: Literal["fail", "ignore"] = "fail"


DRIFT_STATISTICS = ("psi", "js", "null_share")


@dataclass
class DriftConfig:
    """Feature and prediction drift (jobs/validate/drift.py): against the trailing
    ``reference_days`` validated days; a statistic over its threshold drifts its feature."""

    enabled: bool = True
    reference_days: int = 7
    thresholds: dict[str, float] = field(default_factory=lambda: {
        "psi": 0.2, "js": 0.1, "null_share": 0.05})
    on_drift: Literal["warn", "fail"] = "warn"
    bins: int = 10
    skip_ids: bool = True          # hashed id features (no vocabulary): not compared
    id_buckets: int = 64           # with skip_ids false: ids compared over pmod(id, id_buckets)
    skip: list[str] = field(default_factory=list)   # feature names never compared
    # segmented drift: every watched feature also per value of this categorical feature
    # (rows with segment "<column>=<value>"); informational, never fails validation
    segment_column: str | None = None


@dataclass
class CatalogConfig:
    top_k: int = 20
    max_items_per_user: int = 200
    fusion: Literal["product", "sum"] = "product"
    fusion_weights: dict[str, float] = field(default_factory=dict)
    method: Literal["factored", "rows"] = "factored"


RUNTIMES = ("torch", "onnxruntime")  # scoring.runtime (jobs/runtime/onnx.py)


@dataclass
class ScoringConfig:
    validate_inline: bool = False
    reader: Literal["direct", "spark"] = "direct"
    batch_size: int = 8192
    threads_per_task: int = 0
    pipeline: bool = False
    runtime: Literal["torch", "onnxruntime"] = "torch"
    precision: Literal["fp32", "bf16", "int8"] = "fp32"  # mmoe_model/precision.py
    catalog: CatalogConfig = field(default_factory=CatalogConfig)


@dataclass
class EvaluationConfig:
    label_wait_days: int = 0
    segments: list[str] | None = None
    ranking_ks: list[int] = field(default_factory=lambda: [5, 10])   # ndcg@K, map@K, ...
    # evaluate --recommendations judges day D's lists on the interactions logged on D + this
    recommendations_label_offset_days: int = 0


# The ``training`` section is flat in YAML (``num_experts: 8``, ``epochs: 8``) but has no
# defaults of its own: every key is a field of the model library's ModelConfig (architecture)
# or TrainConfig (optimisation), and whatever the file leaves out keeps that class's default.
# ``arch`` and ``seed`` come from the command line, the rest of TrainConfig is runtime plumbing.
MODEL_KEYS = tuple(f.name for f in fields(ModelConfig) if f.name != "arch")
TRAIN_KEYS = ("epochs", "batch_size", "learning_rate", "validation_fraction", "patience",
              "task_weights", "weight_decay", "balance_weight")


@dataclass
class TrainingConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optimiser: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_flat(cls, raw: dict[str, Any], where: str = "config.training") -> "TrainingConfig":
        unknown = set(raw) - set(MODEL_KEYS) - set(TRAIN_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
        model = {k: v for k, v in raw.items() if k in MODEL_KEYS}
        optimiser = {k: v for k, v in raw.items() if k in TRAIN_KEYS}
        for cls_, values in ((ModelConfig, model), (TrainConfig, optimiser)):
            _check_types(cls_, values, where)
        try:
            return cls(ModelConfig(**model), TrainConfig(**optimiser))
        except (ModelConfigError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def model_config(self, arch: str) -> ModelConfig:
        return replace(self.model, arch=arch)

    def train_config(self, epochs: int | None = None, seed: int = 0) -> TrainConfig:
        return replace(self.optimiser, seed=seed,
                       epochs=self.optimiser.epochs if epochs is None else epochs)


@dataclass(frozen=True)
class Guardrail:
    """TFMA-style change threshold: the candidate may not be worse than the baseline by more than
    ``max_regression`` (absolute, or relative to the baseline value) on the pooled, all-segment
    value of a task. Which way is worse comes from the metric (``jobs.core.metric_registry``)."""

    metric: str
    max_regression: float
    relative: bool = False


GATE_KINDS = ("min", "max_regression", "must_improve")


@dataclass(frozen=True)
class Gate:
    """A rule a team writes down for one task, metric and slice (``segment``, default ``all``;
    pooled over the range): ``min`` - the candidate's value is at least ``threshold`` (at most,
    for a lower-is-better metric); ``max_regression`` - the candidate is worse than the baseline
    by at most ``threshold`` (the metric's own direction); ``must_improve`` - the row's verdict
    is ``better``."""

    task: str
    metric: str
    kind: str
    threshold: float | None = None
    segment: str = "all"

    def describe(self) -> str:
        where = f"{self.task}{'' if self.segment == 'all' else ' / ' + self.segment} {self.metric}"
        if self.kind == "min":
            return f"{where}: candidate {'<=' if _lower(self.metric) else '>='} {self.threshold:g}"
        if self.kind == "max_regression":
            return f"{where}: regression <= {self.threshold:g}"
        return f"{where}: must improve"


def _lower(metric: str) -> bool:
    return registry_metric(metric).direction == "lower"


def parse_gates(raw: Any, source: str = "compare.gates") -> list[Gate]:
    """``compare.gates``: a list of mappings {task, metric, [segment], one of min: X,
    max_regression: X, must_improve: true}."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{source} must be a list of mappings, got {raw!r}")
    out = []
    for i, g in enumerate(raw):
        where = f"{source}[{i}]"
        if not isinstance(g, dict) or not {"task", "metric"} <= set(g):
            raise ConfigError(f"{where}: must be a mapping with task, metric and one of "
                              f"{', '.join(GATE_KINDS)}")
        extra = set(g) - {"task", "metric", "segment", *GATE_KINDS}
        kinds = [k for k in GATE_KINDS if k in g]
        if extra or len(kinds) != 1:
            raise ConfigError(f"{where}: exactly one of {', '.join(GATE_KINDS)} (got "
                              f"{sorted(set(g) - {'task', 'metric', 'segment'})})")
        metric = str(g["metric"])
        if metric not in COMPARED and not is_ranking(metric):
            raise ConfigError(f"{where}.metric: {metric!r} is not a compared metric")
        kind, value = kinds[0], g[kinds[0]]
        if kind == "must_improve":
            if value is not True:
                raise ConfigError(f"{where}.must_improve: must be true, got {value!r}")
            threshold = None
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    (kind == "max_regression" and value < 0):
                raise ConfigError(f"{where}.{kind}: must be a number"
                                  f"{' >= 0' if kind == 'max_regression' else ''}, got {value!r}")
            threshold = float(value)
        out.append(Gate(str(g["task"]), metric, kind, threshold, str(g.get("segment", "all"))))
    return out


@dataclass
class CounterfactualConfig:
    """Off-policy estimates of each model's own lists (jobs/compare/counterfactual.py)."""

    enabled: bool = True
    policies: list[str] = field(default_factory=lambda: ["top_k", "softmax"])
    temperature: float = 0.5          # softmax target: inclusion ~ exp(logit(p) / temperature)
    max_weight: float = 1000.0        # importance weights clipped at this
    reward_model: Literal["baseline", "candidate"] = "baseline"   # DR's q^ (both arms)


@dataclass
class CompareConfig:
    replicates: int = 200
    seed: int = 0
    alpha: float = 0.05
    adjustment: Literal["bh", "holm"] = "bh"
    decision_metrics: list[str] = field(default_factory=lambda: ["auc", "logloss"])
    guardrails: dict[str, dict[str, Any]] = field(default_factory=dict)
    gates: list[dict[str, Any]] = field(default_factory=list)
    # slices to judge (default: evaluate's segment columns): a column, or a list of columns
    # crossed ([platform, user_cohort] -> rows platform=ios & user_cohort=new)
    segments: list[Any] | None = None
    min_slice_rows: int = 100       # a slice value with fewer paired rows is too_small, not judged
    min_slice_requests: int = 20    # ... for a ranking metric: fewer requests with a positive
    counterfactual: CounterfactualConfig = field(default_factory=CounterfactualConfig)

    def gate_list(self) -> list[Gate]:
        return parse_gates(self.gates)

    def guardrail_list(self) -> list[Guardrail]:
        out = []
        for metric, raw in self.guardrails.items():
            where = f"config.compare.guardrails.{metric}"
            if metric not in COMPARED:
                raise ConfigError(f"{where}: unknown metric (one of {', '.join(COMPARED)})")
            if not isinstance(raw, dict) or set(raw) - {"max_regression", "relative"} \
                    or "max_regression" not in raw:
                raise ConfigError(f"{where}: must be a mapping with max_regression (and relative)")
            value = raw["max_regression"]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{where}.max_regression: must be a number >= 0, got {value!r}")
            out.append(Guardrail(metric, float(value), bool(raw.get("relative", False))))
        return out


@dataclass
class LocksConfig:
    """Partition locks (one writer per partition, see jobs/core/locks.py)."""

    wait_seconds: float = 300.0   # how long a writer waits for a busy partition, then refuses
    poll_seconds: float = 0.5     # how often it looks again while waiting


@dataclass
class DemoConfig:
    dataset: str = "synth"
    start: str = "2026-11-01"
    days: int = 3
    rows_per_day: int = 40000
    seed: int = 7
    arch: str = "mmoe"
    challenger_arch: str = "shared-bottom"
    epochs: int = 3
    # logged exploration (synth --logging-policy): the A/B also estimates each model on its
    # own lists (compare's counterfactual section); null: plain impressions
    logging_policy: Literal["uniform", "popularity", "softmax"] | None = "softmax"
    # the gates the demo's A/B decides with where compare.gates names none (compare.gates' form)
    gates: list[dict[str, Any]] = field(default_factory=list)


# Logical tables a job config may map to Spark catalog tables (CONTRACT.md, "Tables").
MAPPABLE_TABLES = ("features", "labels", "candidates", "users", "items", "predictions",
                   "quarantine", "metrics", "ab_reports", "recommendations", "drift",
                   "policy_values")
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,2}$")
_COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class TableMapping:
    """``tables.<dataset>.<table>``: a catalog table name (``db.name``), or a mapping with
    ``name`` and optionally ``partition_column`` (default ``ds``) and ``partition_type``
    (``string``, YYYY-MM-DD, the default; or ``date``)."""

    name: str
    partition_column: str = "ds"
    partition_type: Literal["string", "date"] = "string"


def parse_tables(raw: Any, where: str = "config.tables") -> dict[str, dict[str, TableMapping]]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping <dataset>: {{<table>: <db>.<name>}}")
    out: dict[str, dict[str, TableMapping]] = {}
    for dataset, tables in raw.items():
        if not isinstance(tables, dict):
            raise ConfigError(f"{where}.{dataset}: must be a mapping <table>: <db>.<name>")
        out[str(dataset)] = {}
        for name, value in tables.items():
            at = f"{where}.{dataset}.{name}"
            if name not in MAPPABLE_TABLES:
                raise ConfigError(f"{at}: unknown table (one of {', '.join(MAPPABLE_TABLES)})")
            value = {"name": value} if isinstance(value, str) else value
            if not isinstance(value, dict) or "name" not in value:
                raise ConfigError(f"{at}: must be a table name or a mapping with name")
            unknown = set(value) - {"name", "partition_column", "partition_type"}
            if unknown:
                raise ConfigError(f"{at}: unknown key(s) {sorted(unknown)}")
            mapping = TableMapping(
                name=_typed(str, value["name"], f"{at}.name"),
                partition_column=_typed(str, value.get("partition_column", "ds"),
                                        f"{at}.partition_column"),
                partition_type=_typed(Literal["string", "date"],
                                      value.get("partition_type", "string"),
                                      f"{at}.partition_type"))
            if not _TABLE_NAME.match(mapping.name):
                raise ConfigError(f"{at}: {mapping.name!r} is not a catalog table name "
                                  f"([catalog.]db.name, letters, digits, '_')")
            if not _COLUMN_NAME.match(mapping.partition_column):
                raise ConfigError(f"{at}.partition_column: {mapping.partition_column!r} is not a "
                                  f"column name")
            out[str(dataset)][name] = mapping
    return out


@dataclass
class JobConfig:
    warehouse: Path = Path("warehouse")
    spark: SparkConfig = field(default_factory=SparkConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    locks: LocksConfig = field(default_factory=LocksConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    tables: dict[str, dict[str, TableMapping]] = field(default_factory=dict)


def load_config(path: str | Path | None = None, warehouse: str | Path | None = None,
                remote: str | None = None) -> JobConfig:
    """Read a config file (default: the embedded demo config); ``warehouse`` overrides its root,
    ``remote`` (a Spark Connect URL) its ``spark.remote``."""
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        mark = getattr(exc, "problem_mark", None)
        if getattr(exc, "problem", None) and mark is not None:
            first = f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
        raise ConfigError(f"cannot read config {path}: {first}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: must be a mapping")
    cfg = _build(JobConfig, raw, "config")
    if warehouse is not None:
        cfg.warehouse = _local(warehouse, "--warehouse")
    elif "warehouse" in raw:
        cfg.warehouse = _local(raw["warehouse"], "config.warehouse")
    cfg.warehouse = Path(cfg.warehouse).expanduser().resolve()
    if remote:
        cfg.spark.remote = remote
    _check(cfg)
    return cfg


def _local(value: str | Path, what: str) -> Path:
    try:
        return local_path(value, what)
    except InputError as exc:
        raise ConfigError(str(exc)) from None


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(raw) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        if cls is JobConfig and name == "tables":
            kwargs[name] = parse_tables(value)
        elif hint is TrainingConfig:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{name}: must be a mapping")
            kwargs[name] = TrainingConfig.from_flat(value, f"{where}.{name}")
        elif is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{name}: must be a mapping")
            kwargs[name] = _build(hint, value, f"{where}.{name}")
        else:
            kwargs[name] = _typed(hint, value, f"{where}.{name}")
    return cls(**kwargs)


def _typed(hint: Any, value: Any, where: str) -> Any:
    """``value`` checked against a field's type hint (scalars, Literal, Path, list, dict,
    optional); a mismatch is a one-line :class:`ConfigError` naming the key."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _typed(inner[0], value, where) if len(inner) == 1 else value
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: must be one of {', '.join(map(repr, args))}, "
                              f"got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: must be a path (a string), got {value!r}")
        return Path(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, got {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or (hint is int and not float(value).is_integer()):
            raise ConfigError(f"{where}: must be {'an integer' if hint is int else 'a number'}, "
                              f"got {value!r}")
        return hint(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a string, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: must be a list, got {value!r}")
        return [_typed(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be a mapping, got {value!r}")
        if where.endswith(".conf"):  # Spark settings: keys and values as strings
            bad = [k for k, v in value.items() if isinstance(v, (dict, list)) or v is None]
            if bad:
                raise ConfigError(f"{where}.{bad[0]}: must be a scalar, got {value[bad[0]]!r}")
            return {str(k): (str(v).lower() if isinstance(v, bool) else str(v))
                    for k, v in value.items()}
        key_t, value_t = args if args else (Any, Any)
        return {_typed(key_t, k, where) if key_t is not Any else k:
                _typed(value_t, v, f"{where}.{k}") if value_t is not Any else v
                for k, v in value.items()}
    return value


def _check_types(cls: type, values: dict[str, Any], where: str) -> None:
    """Numbers must be numbers: YAML's ``"8"`` would otherwise fail deep inside torch."""
    hints = get_type_hints(cls)
    for name, value in values.items():
        if hints[name] in (int, float) and (isinstance(value, bool)
                                            or not isinstance(value, (int, float))):
            raise ConfigError(f"{where}.{name}: must be a number, got {value!r}")


def _check(cfg: JobConfig) -> None:
    if cfg.validation.on_bad_rows not in ("quarantine", "fail"):
        raise ConfigError("validation.on_bad_rows must be 'quarantine' or 'fail'")
    if not 0.0 <= cfg.validation.max_bad_row_fraction <= 1.0:
        raise ConfigError("validation.max_bad_row_fraction must be within [0, 1]")
    if cfg.scoring.reader not in ("direct", "spark"):
        raise ConfigError("scoring.reader must be 'direct' or 'spark'")
    if cfg.scoring.runtime not in RUNTIMES:
        raise ConfigError(f"scoring.runtime must be one of {', '.join(RUNTIMES)}; "
                          f"got {cfg.scoring.runtime!r}")
    if cfg.scoring.precision not in PRECISIONS:
        raise ConfigError(f"scoring.precision must be one of {', '.join(PRECISIONS)}; "
                          f"got {cfg.scoring.precision!r}")
    if cfg.scoring.precision != "fp32" and cfg.scoring.runtime != "torch":
        raise ConfigError(f"scoring.precision {cfg.scoring.precision} needs scoring.runtime "
                          f"torch (onnxruntime scores the exported float32 graph); got "
                          f"{cfg.scoring.runtime!r}")
    if cfg.scoring.batch_size < 1:
        raise ConfigError("scoring.batch_size must be >= 1")
    if cfg.scoring.catalog.top_k < 1 or cfg.scoring.catalog.max_items_per_user < 1:
        raise ConfigError("scoring.catalog.top_k and max_items_per_user must be >= 1")
    if cfg.evaluation.recommendations_label_offset_days < 0:
        raise ConfigError("evaluation.recommendations_label_offset_days must be >= 0")
    if cfg.evaluation.label_wait_days < 0:
        raise ConfigError("evaluation.label_wait_days must be >= 0")
    ks = cfg.evaluation.ranking_ks
    if not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks):
        raise ConfigError(f"evaluation.ranking_ks must be a non-empty list of positive integers; "
                          f"got {ks!r}")
    cfg.evaluation.ranking_ks = sorted(set(ks))
    if cfg.locks.wait_seconds < 0:
        raise ConfigError("locks.wait_seconds must be >= 0")
    if cfg.locks.poll_seconds <= 0:
        raise ConfigError("locks.poll_seconds must be > 0")
    _check_compare(cfg.compare)
    parse_gates(cfg.demo.gates, "demo.gates")
    _check_drift(cfg.drift)


def _check_drift(d: DriftConfig) -> None:
    if d.reference_days < 1:
        raise ConfigError("drift.reference_days must be >= 1")
    if d.bins < 2 or d.id_buckets < 2:
        raise ConfigError("drift.bins and drift.id_buckets must be >= 2")
    unknown = sorted(set(d.thresholds) - set(DRIFT_STATISTICS))
    if unknown:
        raise ConfigError(f"drift.thresholds: unknown statistic(s) {unknown} (one of "
                          f"{', '.join(DRIFT_STATISTICS)})")
    bad = [k for k, v in d.thresholds.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0]
    if bad:
        raise ConfigError(f"drift.thresholds.{bad[0]}: must be a number >= 0, got {d.thresholds[bad[0]]!r}")


def _check_compare(c: CompareConfig) -> None:
    if isinstance(c.replicates, bool) or not isinstance(c.replicates, int) or c.replicates < 20:
        raise ConfigError("compare.replicates must be an integer >= 20")
    if not 0.0 < c.alpha < 1.0:
        raise ConfigError("compare.alpha must be within (0, 1)")
    if c.adjustment not in ("bh", "holm"):
        raise ConfigError("compare.adjustment must be 'bh' or 'holm'")
    unknown = [m for m in c.decision_metrics if m not in COMPARED and not is_ranking(m)]
    if unknown or not c.decision_metrics:
        raise ConfigError(f"compare.decision_metrics must name metrics among "
                          f"{', '.join(COMPARED)} or ranking metrics (ndcg@K, ...); got "
                          f"{c.decision_metrics}")
    c.guardrail_list()
    c.gate_list()
    if c.segments is not None:
        c.segments = [slice_name(e, f"compare.segments[{i}]") for i, e in enumerate(c.segments)]
    if c.min_slice_rows < 0 or c.min_slice_requests < 0:
        raise ConfigError("compare.min_slice_rows and compare.min_slice_requests must be >= 0")
    cf = c.counterfactual
    bad = [p for p in cf.policies if p not in ("top_k", "softmax")]
    if bad or not cf.policies:
        raise ConfigError(f"compare.counterfactual.policies: must name top_k and/or softmax, "
                          f"got {cf.policies}")
    if not cf.temperature > 0:
        raise ConfigError(f"compare.counterfactual.temperature must be > 0, got {cf.temperature}")
    if not cf.max_weight >= 1:
        raise ConfigError(f"compare.counterfactual.max_weight must be >= 1, got {cf.max_weight}")
