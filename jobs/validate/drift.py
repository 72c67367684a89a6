"""Drift statistics, numpy only: a day's *profile* of each feature, a *reference* pooled from the
trailing days' profiles, and the comparison that turns them into drift-table rows.

- **dense** features: PSI over bins whose edges are the reference's quantiles (``bins``, 10:
  deciles; tied edges merged), plus the Jensen-Shannon distance (base 2, in [0, 1]) over the
  same bins. A value ``x`` falls in bin ``#{edges <= x}`` (bins ``[e_j, e_j+1)``, open at both
  ends), in numpy and in Spark alike.
- **categorical** features with a vocabulary: PSI and JS over the vocabulary plus one
  out-of-vocabulary bucket. Hashed identifier features (no vocabulary: user and item ids) are
  skipped by default; with ``skip_ids: false`` they are compared over ``id_buckets`` buckets
  ``pmod(value, id_buckets)``.
- every feature: the share of nulls, compared as ``|current - reference|``.

PSI = sum_i (a_i - e_i) ln(a_i / e_i) over bin proportions, each proportion floored at
:data:`PSI_FLOOR` (an empty bin would make it infinite; a category new today, absent from the
reference, then weighs ``a ln(a / 1e-4)``). JS is computed on the raw proportions (no floor:
it is finite with empty bins).

A day's profile (what ``validation/ds=D/drift_profile.json`` keeps): per dense feature the row
and null counts and :data:`PROFILE_QUANTILES` quantiles of its non-null values; per categorical
feature the counts per vocabulary value (or id bucket), the out-of-vocabulary count and the
null count. The reference pools up to ``reference_days`` profiles: a dense feature's pooled
distribution is every day's quantile points, each weighing ``non-null rows / points`` (the
quantile summary's error is at most 1/points of the mass per bin); categorical counts add up.
The current day's bin counts are exact (counted in Spark at the reference's edges).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PSI_FLOOR = 1e-4
PROFILE_QUANTILES = 100
OOV = "__oov__"
STATISTICS = ("psi", "js", "null_share")


def profile_probabilities(points: int = PROFILE_QUANTILES) -> list[float]:
    """Mid-point probabilities of a day's quantile summary: (i + 0.5) / points."""
    return [(i + 0.5) / points for i in range(points)]


# --------------------------------------------------------------------------------------------
# The statistics


def _proportions(counts: Any) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        raise ValueError("a distribution needs at least one observation")
    return c / total


def psi(expected: Any, actual: Any, floor: float = PSI_FLOOR) -> float:
    """Population stability index of ``actual`` against ``expected`` (counts or proportions
    over the same bins)."""
    e = np.maximum(_proportions(expected), floor)
    a = np.maximum(_proportions(actual), floor)
    return float(np.sum((a - e) * np.log(a / e)))


def js_distance(p: Any, q: Any) -> float:
    """Jensen-Shannon distance, base 2 (the square root of the divergence; 0 = same, 1 =
    disjoint), over counts or proportions on the same bins."""
    p, q = _proportions(p), _proportions(q)
    m = 0.5 * (p + q)

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return math.sqrt(max(0.0, 0.5 * kl(p) + 0.5 * kl(q)))


def weighted_quantile_edges(points: np.ndarray, weights: np.ndarray, bins: int) -> list[float]:
    """Inner bin edges: the (j / bins)-quantiles (j = 1..bins-1) of a weighted sample, the
    smallest point whose cumulative weight reaches j / bins of the total; ties merged."""
    order = np.argsort(points, kind="stable")
    pts, cum = np.asarray(points, dtype=np.float64)[order], np.cumsum(np.asarray(weights)[order])
    if len(pts) == 0 or cum[-1] <= 0:
        return []
    targets = cum[-1] * np.arange(1, bins) / bins
    idx = np.minimum(np.searchsorted(cum, targets - 1e-12 * cum[-1], side="left"), len(pts) - 1)
    return sorted(set(float(v) for v in pts[idx]))


def bin_index(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Bin of each value: the number of edges <= value (bins [e_j, e_j+1))."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")


def bin_counts(values: np.ndarray, edges: list[float], weights: np.ndarray | None = None) -> np.ndarray:
    return np.bincount(bin_index(np.asarray(values, dtype=np.float64), edges),
                       weights=weights, minlength=len(edges) + 1).astype(np.float64)


def counts_from_cumulative(rows_at_or_above: list[float], total: float) -> np.ndarray:
    """Bin counts from ``#{x >= e_j}`` per edge (what Spark counts) and the non-null total."""
    ge = [total] + list(rows_at_or_above) + [0.0]
    return np.array([ge[j] - ge[j + 1] for j in range(len(ge) - 1)], dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Profiles


@dataclass
class FeatureProfile:
    """One feature on one day. ``kind``: dense | categorical. Dense: ``quantiles`` of the
    non-null values; categorical: ``counts`` per category (``OOV`` for the rest)."""

    kind: str
    rows: int
    nulls: int
    quantiles: list[float] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def nonnull(self) -> int:
        return self.rows - self.nulls


@dataclass
class DayProfile:
    ds: str
    features: dict[str, FeatureProfile]
    # segmented drift: per "<column>=<value>", the profile of that value's rows
    segments: dict[str, dict[str, FeatureProfile]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {"ds": self.ds, "features": {k: asdict(v) for k, v in self.features.items()}}
        if self.segments:
            out["segments"] = {s: {k: asdict(v) for k, v in f.items()}
                               for s, f in self.segments.items()}
        return out

    def segment(self, name: str) -> DayProfile:
        """The profile of one segment's rows, as a day profile."""
        return DayProfile(self.ds, self.segments.get(name, {}))

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DayProfile:
        def features(block: dict) -> dict[str, FeatureProfile]:
            return {k: FeatureProfile(
                kind=v["kind"], rows=int(v["rows"]), nulls=int(v["nulls"]),
                quantiles=[float(q) for q in v.get("quantiles") or []],
                counts={str(c): int(n) for c, n in (v.get("counts") or {}).items()})
                for k, v in block.items()}

        return cls(ds=str(raw["ds"]), features=features(raw["features"]),
                   segments={s: features(b) for s, b in (raw.get("segments") or {}).items()})


@dataclass(frozen=True)
class Watched:
    """A feature drift watches: ``kind`` dense | categorical; ``categories`` the vocabulary
    (as strings) or the id bucket numbers; ``buckets`` > 0 for hashed ids (``pmod(v, n)``)."""

    name: str
    kind: str
    categories: tuple[str, ...] = ()
    buckets: int = 0


def profile_values(feature: Watched, values: Iterable[Any],
                   points: int = PROFILE_QUANTILES) -> FeatureProfile:
    """A feature's profile from its values (``None``/NaN for nulls in a dense column; ``None``
    for a null category). What Spark computes in the validation pass, in numpy."""
    vals = list(values)
    if feature.kind == "dense":
        arr = np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float64)
        present = arr[~np.isnan(arr)]
        quantiles = (np.quantile(present, profile_probabilities(points)).tolist()
                     if len(present) else [])
        return FeatureProfile("dense", len(arr), int(len(arr) - len(present)), quantiles=quantiles)
    nulls = sum(v is None for v in vals)
    keys = [category_of(feature, v) for v in vals if v is not None]
    counts = {c: 0 for c in feature.categories} | {OOV: 0}
    for k in keys:
        counts[k] += 1
    return FeatureProfile("categorical", len(vals), nulls, counts=counts)


def category_of(feature: Watched, value: Any) -> str:
    if feature.buckets:
        return str(int(value) % feature.buckets)
    text = str(value)
    return text if text in feature.categories else OOV


# --------------------------------------------------------------------------------------------
# Reference and comparison


@dataclass
class Reference:
    """The pooled trailing profiles of one feature (or a task's predictions)."""

    days: list[str]
    kind: str
    rows: int
    nulls: int
    edges: list[float] = field(default_factory=list)
    expected: np.ndarray | None = None       # counts per bin / category (incl. OOV last)
    categories: tuple[str, ...] = ()

    @property
    def null_share(self) -> float:
        return self.nulls / self.rows if self.rows else 0.0


def pool(name: str, profiles: list[DayProfile], bins: int) -> Reference | None:
    """The reference of feature ``name`` pooled over ``profiles`` (None: no day has it)."""
    days = [p for p in profiles if name in p.features]
    if not days:
        return None
    feats = [p.features[name] for p in days]
    kind = feats[0].kind
    rows, nulls = sum(f.rows for f in feats), sum(f.nulls for f in feats)
    ref = Reference(days=[p.ds for p in days], kind=kind, rows=rows, nulls=nulls)
    if kind == "dense":
        pts = [(np.asarray(f.quantiles), f.nonnull / len(f.quantiles)) for f in feats
               if f.quantiles and f.nonnull]
        if not pts:
            return ref
        points = np.concatenate([p for p, _ in pts])
        weights = np.concatenate([np.full(len(p), w) for p, w in pts])
        ref.edges = weighted_quantile_edges(points, weights, bins)
        ref.expected = bin_counts(points, ref.edges, weights)
        return ref
    cats = [c for c in feats[0].counts if c != OOV]
    ref.categories = tuple(cats)
    ref.expected = np.array([sum(f.counts.get(c, 0) for f in feats) for c in cats]
                            + [sum(f.counts.get(OOV, 0) for f in feats)], dtype=np.float64)
    return ref


def current_counts(reference: Reference, profile: FeatureProfile,
                   values: np.ndarray | None = None) -> np.ndarray:
    """The current day's counts on the reference's bins: exact from ``values`` when given
    (numpy) or from the profile's categorical counts; a dense profile alone gives its quantile
    points' counts (approximate)."""
    if reference.kind == "dense":
        if values is not None:
            v = np.asarray(values, dtype=np.float64)
            return bin_counts(v[~np.isnan(v)], reference.edges)
        q = np.asarray(profile.quantiles)
        return bin_counts(q, reference.edges, np.full(len(q), profile.nonnull / max(1, len(q))))
    return np.array([profile.counts.get(c, 0) for c in reference.categories]
                    + [profile.counts.get(OOV, 0)], dtype=np.float64)


@dataclass(frozen=True)
class DriftRow:
    """One row of the drift table (CONTRACT.md): ``feature, statistic, value, threshold,
    drifted, reference`` (+ ``model_version`` for prediction rows; + ``reference_days``)."""

    feature: str
    statistic: str
    value: float
    threshold: float | None
    drifted: bool
    reference: str
    reference_days: int
    model_version: str | None = None
    segment: str | None = None        # "<column>=<value>" for segmented drift, else None


def describe(reference: Reference | None, wanted: int) -> str:
    if reference is None or not reference.days:
        return f"trailing 0 of {wanted} days"
    days = sorted(reference.days)
    return f"trailing {len(days)} of {wanted} days {days[0]}..{days[-1]}"


def compare(name: str, reference: Reference | None, profile: FeatureProfile,
            counts: np.ndarray | None, thresholds: dict[str, float], wanted_days: int,
            model_version: str | None = None,
            statistics: tuple[str, ...] = STATISTICS) -> list[DriftRow]:
    """Drift rows of one feature. Nothing is drifted while the reference has fewer than
    ``wanted_days`` days (the rows still carry the values; ``reference`` says how many)."""
    if reference is None or reference.expected is None or reference.expected.sum() <= 0:
        return []
    judged = len(reference.days) >= wanted_days
    label = describe(reference, wanted_days)
    actual = current_counts(reference, profile) if counts is None else counts
    values: dict[str, float] = {}
    if actual.sum() > 0:
        values["psi"] = psi(reference.expected, actual)
        values["js"] = js_distance(reference.expected, actual)
    if profile.rows:
        values["null_share"] = abs(profile.nulls / profile.rows - reference.null_share)
    out = []
    for stat in statistics:
        if stat not in values:
            continue
        limit = thresholds.get(stat)
        out.append(DriftRow(name, stat, values[stat], limit,
                            bool(judged and limit is not None and values[stat] > limit),
                            label, len(reference.days), model_version))
    return out


def drifted_features(rows: list[DriftRow]) -> list[str]:
    """Names of the features (or prediction columns) with at least one drifted statistic, in
    row order."""
    seen: dict[str, None] = {}
    for r in rows:
        if r.drifted:
            seen.setdefault(r.feature)
    return list(seen)


def summary(rows: list[DriftRow]) -> str:
    """``x3 (psi 0.41 > 0.2), platform (js 0.12 > 0.1)``: each drifted feature with its
    statistics over threshold."""
    parts: dict[str, list[str]] = {}
    for r in rows:
        if r.drifted:
            parts.setdefault(r.feature, []).append(f"{r.statistic} {r.value:.3g} > {r.threshold:g}")
    return ", ".join(f"{k} ({'; '.join(v)})" for k, v in parts.items())
