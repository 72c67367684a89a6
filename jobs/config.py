"""The typed job config: one YAML file, defaults embedded, overridable from the CLI / env."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_type_hints

import yaml

from jobs.errors import ConfigError

DEFAULT_CONFIG = Path(__file__).parent / "default_config.yaml"


@dataclass
class SparkConfig:
    master: str = "local[*]"
    app_name: str = "mmoe"
    conf: dict[str, str] = field(default_factory=dict)


@dataclass
class ValidationConfig:
    on_bad_rows: Literal["quarantine", "fail"] = "quarantine"
    max_bad_row_fraction: float = 0.05
    keep_data_docs: bool = True


@dataclass
class CatalogConfig:
    top_k: int = 20
    max_items_per_user: int = 200
    fusion_weights: dict[str, float] = field(default_factory=dict)


@dataclass
class ScoringConfig:
    validate_inline: bool = False
    reader: Literal["direct", "spark"] = "direct"
    batch_size: int = 8192
    threads_per_task: int = 0
    catalog: CatalogConfig = field(default_factory=CatalogConfig)


@dataclass
class EvaluationConfig:
    label_wait_days: int = 0
    segments: list[str] | None = None


@dataclass
class TrainingConfig:
    epochs: int = 8
    batch_size: int = 1024
    learning_rate: float = 0.002
    validation_fraction: float = 0.2
    patience: int = 2
    task_weights: dict[str, float] = field(default_factory=dict)
    num_experts: int = 8
    expert_hidden: list[int] = field(default_factory=lambda: [64])
    expert_dim: int = 32
    tower_hidden: list[int] = field(default_factory=lambda: [16])
    num_shared_experts: int = 2
    num_levels: int = 1
    gate_temperature: float = 1.0    # > 1 flattens the gates, < 1 sharpens them
    gate_dropout: float = 0.0        # masks expert logits in training against gate collapse
    gate_prior: list[list[float]] | None = None  # tasks x experts initial gate bias
    dropout: float = 0.0
    weight_decay: float = 0.0


@dataclass
class DemoConfig:
    dataset: str = "synth"
    start: str = "2026-11-01"
    days: int = 3
    rows_per_day: int = 40000
    seed: int = 7
    arch: str = "mmoe"
    epochs: int = 3


@dataclass
class JobConfig:
    warehouse: Path = Path("warehouse")
    spark: SparkConfig = field(default_factory=SparkConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)


def load_config(path: str | Path | None = None, warehouse: str | Path | None = None) -> JobConfig:
    """Read a config file (default: the embedded demo config); ``warehouse`` overrides its root."""
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: must be a mapping")
    cfg = _build(JobConfig, raw, "config")
    if warehouse is not None:
        cfg.warehouse = Path(warehouse)
    cfg.warehouse = Path(cfg.warehouse).expanduser().resolve()
    _check(cfg)
    return cfg


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(raw) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        if is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{name}: must be a mapping")
            kwargs[name] = _build(hint, value, f"{where}.{name}")
        elif hint is Path:
            kwargs[name] = Path(value)
        elif hint in (int, float) and not isinstance(value, (int, float)):
            raise ConfigError(f"{where}.{name}: must be a number, got {value!r}")
        elif isinstance(value, dict) and name == "conf":
            kwargs[name] = {str(k): str(v) for k, v in value.items()}
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _check(cfg: JobConfig) -> None:
    if cfg.validation.on_bad_rows not in ("quarantine", "fail"):
        raise ConfigError("validation.on_bad_rows must be 'quarantine' or 'fail'")
    if not 0.0 <= cfg.validation.max_bad_row_fraction <= 1.0:
        raise ConfigError("validation.max_bad_row_fraction must be within [0, 1]")
    if cfg.scoring.reader not in ("direct", "spark"):
        raise ConfigError("scoring.reader must be 'direct' or 'spark'")
    if cfg.scoring.batch_size < 1:
        raise ConfigError("scoring.batch_size must be >= 1")
    if cfg.evaluation.label_wait_days < 0:
        raise ConfigError("evaluation.label_wait_days must be >= 0")
