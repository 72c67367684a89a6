"""The model library's hyper-parameters, defined once: :class:`ModelConfig` (architecture) and
:class:`TrainConfig` (optimisation). The job config's ``training`` section, the benches and the
scripts all start from these defaults. No torch here, so the CLI can load a config instantly.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Sequence

from mmoe_model.archs import ARCHS
from mmoe_model.errors import ModelConfigError

GATE_KINDS = ("softmax", "topk", "max", "constant")
EXPERT_TYPES = ("mlp", "cross")
_GROUP = re.compile(r"^(?P<count>[0-9]+)x(?P<type>[a-z]+)(?::(?P<args>[0-9,]*))?"
                    r"(?:@(?P<fields>[A-Za-z0-9_,]+))?$")


@dataclass(frozen=True)
class ExpertGroup:
    """One entry of ``ModelConfig.expert_layout``: ``count`` experts of one structure reading the
    feature ``fields`` (feature names or spec ``group`` names; empty: every input).

    Written ``"<count>x<type>[:<args>][@<field>,<field>...]"``: ``"4xmlp:64,32"`` (4 MLPs with
    hidden widths 64, 32, then ``expert_dim``; no args: ``expert_hidden``), ``"2xcross:3"`` (2
    DCN-v2 cross networks of 3 cross layers, then a ReLU projection to ``expert_dim``; no args: 2),
    ``"2xmlp@age,education"`` (2 MLPs reading only those features).
    """

    count: int
    type: str
    args: tuple[int, ...] | None
    fields: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> "ExpertGroup":
        m = _GROUP.match(str(text).strip())
        if m is None:
            raise ModelConfigError(f"expert group {text!r} is not '<count>x<type>[:<args>]"
                                   f"[@<field>,...]' (e.g. '4xmlp:64', '2xcross:3@age,sex')")
        kind = m["type"]
        if kind not in EXPERT_TYPES:
            raise ModelConfigError(f"expert group {text!r}: type must be one of "
                                   f"{', '.join(EXPERT_TYPES)}, got {kind!r}")
        count = int(m["count"])
        if count < 1:
            raise ModelConfigError(f"expert group {text!r}: count must be >= 1")
        args = None
        if m["args"]:
            try:
                args = tuple(int(a) for a in m["args"].split(","))
            except ValueError:
                raise ModelConfigError(f"expert group {text!r}: malformed args") from None
            if any(a < 1 for a in args) or (kind == "cross" and len(args) != 1):
                raise ModelConfigError(f"expert group {text!r}: args must be positive "
                                       f"({'one layer count' if kind == 'cross' else 'widths'})")
        fields_ = tuple(f for f in (m["fields"] or "").split(",") if f)
        return cls(count, kind, args, fields_)


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
    gate: str = "softmax"
    gate_k: int = 2
    expert_layout: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # Accept lists (JSON, YAML) but store tuples so the config stays hashable and frozen.
        object.__setattr__(self, "expert_hidden", tuple(int(h) for h in self.expert_hidden))
        object.__setattr__(self, "tower_hidden", tuple(int(h) for h in self.tower_hidden))
        if self.gate_prior is not None:
            object.__setattr__(self, "gate_prior",
                               tuple(tuple(float(v) for v in row) for row in self.gate_prior))
        if self.expert_layout is not None:
            if isinstance(self.expert_layout, str):
                raise ModelConfigError("expert_layout must be a list of expert groups, got a string")
            object.__setattr__(self, "expert_layout", tuple(str(e) for e in self.expert_layout))
        self.validate()

    @property
    def expert_groups(self) -> tuple[ExpertGroup, ...] | None:
        return None if self.expert_layout is None else tuple(ExpertGroup.parse(e) for e in self.expert_layout)

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
        if self.gate not in GATE_KINDS:
            raise ModelConfigError(f"gate must be one of {', '.join(GATE_KINDS)}; "
                                   f"got {self.gate!r}")
        visible = self.num_experts + (self.num_shared_experts if self.arch == "ple" else 0)
        if self.gate == "topk" and not 1 <= self.gate_k <= visible:
            raise ModelConfigError(f"gate_k must be within [1, {visible}] (the experts a gate "
                                   f"sees), got {self.gate_k}")
        if self.expert_layout is not None:
            if self.arch not in ("mmoe", "omoe"):
                raise ModelConfigError(f"expert_layout (heterogeneous / field-split) are supported "
                                       f"for mmoe and omoe, not {self.arch!r}")
            groups = self.expert_groups or ()
            if not groups:
                raise ModelConfigError("expert_layout must name at least one expert group")
            total = sum(g.count for g in groups)
            if total != self.num_experts:
                raise ModelConfigError(f"expert_layout declares {total} expert(s) but num_experts is "
                                       f"{self.num_experts}")

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["expert_hidden"] = list(self.expert_hidden)
        raw["tower_hidden"] = list(self.tower_hidden)
        if self.gate_prior is not None:
            raw["gate_prior"] = [list(row) for row in self.gate_prior]
        if self.expert_layout is not None:
            raw["expert_layout"] = list(self.expert_layout)
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
    # Weight of the load-balancing loss of topk / max gates (Switch Transformer, Fedus et al.
    # 2021): E * sum_e f_e * P_e per gate, 1 when balanced; 0 turns it off.
    balance_weight: float = 0.01
    # A directory for the last epoch's checkpoint (model, optimiser, RNG and early-stopping
    # state); with ``resume`` a run finds it there and continues after that epoch.
    checkpoint_dir: str | None = None
    resume: bool = True

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
        if self.balance_weight < 0:
            raise ModelConfigError(f"balance_weight must be >= 0, got {self.balance_weight}")
