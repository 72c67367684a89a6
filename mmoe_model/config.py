"""The model library's hyper-parameters, defined once: :class:`ModelConfig` (architecture) and
:class:`TrainConfig` (optimisation). The job config's ``training`` section, the benches and the
scripts all start from these defaults. No torch here, so the CLI can load a config instantly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Sequence

from mmoe_model.archs import ARCHS
from mmoe_model.errors import ModelConfigError


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters. ``gate_prior`` [gates x experts] initialises the bias of the
    last layer's task gates: T rows for mmoe/ple, 1 row for omoe; ``num_experts`` columns
    (ple: ``num_experts + num_shared_experts``, own experts first). Archs without gates refuse it.
    """

    arch: str = "mmoe"
    num_experts: int = 8
    expert_hidden: tuple[int, ...] = (64,)
    expert_dim: int = 32
    tower_hidden: tuple[int, ...] = (16,)
    num_shared_experts: int = 2
    num_levels: int = 1
    gate_temperature: float = 1.0
    gate_dropout: float = 0.0
    gate_prior: tuple[tuple[float, ...], ...] | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # Accept lists (JSON, YAML) but store tuples so the config stays hashable and frozen.
        object.__setattr__(self, "expert_hidden", tuple(int(h) for h in self.expert_hidden))
        object.__setattr__(self, "tower_hidden", tuple(int(h) for h in self.tower_hidden))
        if self.gate_prior is not None:
            object.__setattr__(self, "gate_prior",
                               tuple(tuple(float(v) for v in row) for row in self.gate_prior))
        self.validate()

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise ModelConfigError(f"arch must be one of {', '.join(ARCHS)}; got {self.arch!r}")
        for name in ("num_experts", "expert_dim", "num_levels"):
            if int(getattr(self, name)) < 1:
                raise ModelConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_shared_experts < 0:
            raise ModelConfigError(f"num_shared_experts must be >= 0, got "
                                   f"{self.num_shared_experts}")
        if any(h < 1 for h in (*self.expert_hidden, *self.tower_hidden)):
            raise ModelConfigError("hidden layer widths must be >= 1")
        if self.gate_temperature <= 0:
            raise ModelConfigError(f"gate_temperature must be > 0, got {self.gate_temperature}")
        for name in ("gate_dropout", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ModelConfigError(f"{name} must be within [0, 1), got {getattr(self, name)}")
        if self.gate_prior is not None and self.arch in ("shared-bottom", "single-task"):
            raise ModelConfigError(f"gate_prior given, but arch {self.arch!r} has no gates")

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["expert_hidden"] = list(self.expert_hidden)
        raw["tower_hidden"] = list(self.tower_hidden)
        if self.gate_prior is not None:
            raw["gate_prior"] = [list(row) for row in self.gate_prior]
        return raw

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ModelConfigError(f"unknown model config key(s): {sorted(unknown)}")
        try:
            return cls(**raw)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ModelConfigError):
                raise
            raise ModelConfigError(f"malformed model config: {exc}") from None


@dataclass
class TrainConfig:
    """Optimisation settings (the model's shape lives in :class:`ModelConfig`)."""

    epochs: int = 8
    batch_size: int = 1024
    learning_rate: float = 0.002
    validation_fraction: float = 0.2
    patience: int = 2  # stop after this many epochs without a better mean val AUC (min 1)
    task_weights: Mapping[str, float] = field(default_factory=dict)
    seed: int = 0
    weight_decay: float = 0.0
    device: str | None = None  # None: "cuda" when available, else "cpu"
    progress: bool = True  # tqdm bars on stderr
    # torch intra-op threads while training, restored afterwards (None: leave torch's setting).
    # Training batches are small, so the maths is cheap and dispatch-bound: one thread avoids
    # OpenMP barrier stalls, which on a busy 2-core box made an epoch ~9x slower with two.
    num_threads: int | None = 1
    eval_batch_size: int = 8192

    def validate(self, task_names: Sequence[str]) -> None:
        if self.epochs < 1:
            raise ModelConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ModelConfigError("batch sizes must be >= 1")
        if not self.learning_rate > 0:
            raise ModelConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ModelConfigError(f"validation_fraction must be within [0, 1), got "
                                   f"{self.validation_fraction}")
        unknown = set(self.task_weights) - set(task_names)
        if unknown:
            raise ModelConfigError(f"task_weights name unknown task(s) {sorted(unknown)}; "
                                   f"tasks: {list(task_names)}")
        if any(w < 0 for w in self.task_weights.values()) or (
                self.task_weights and sum(self.task_weights.get(t, 1.0) for t in task_names) <= 0):
            raise ModelConfigError("task_weights must be >= 0 with a positive sum")
