"""Feature drift in the validation pass: which features are watched (from the spec and
``drift:``), ONE Spark aggregate over the cached, validated frame that measures today's
profile and the exact bin counts at the reference's edges, and the comparison against the
trailing validated days (jobs/validate/drift.py has the statistics)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.core.config import DriftConfig
from jobs.core.errors import ConfigError
from jobs.validate.drift import (
    OOV,
    DayProfile,
    DriftRow,
    FeatureProfile,
    Reference,
    Watched,
    compare,
    counts_from_cumulative,
    describe,
    drifted_features,
    pool,
    profile_probabilities,
    summary,
)
from jobs.validate.rules import REASON, _ident, _literal, vocabulary_values
from schemas.spec import DatasetSpec, SpecError

# percentile_approx: rank error <= 1/1 000 of the rows. The profile's quantiles are 1 % apart
# and PSI bins 10 %, so 0.1 % is far below what a threshold can see; 10 000 cost a third more
# (2M rows, 20 dense + 4 categorical features, load ~5: 32.6-38.1 s -> 24.2 s; 100: 23.8 s).
PERCENTILE_ACCURACY = 1_000
# The quantile summaries are most of drift's cost (one insertion per value per feature), so a
# day larger than this is summarised on a uniform sample of about this many rows, taken in the
# same single pass. Only the profile (tomorrow's reference) comes from the sample: today's bin
# counts at the reference's edges and the null and category counts stay exact. Rank error of a
# quantile from n sampled values: about sqrt(p (1 - p) / n), <= 0.16 % of the rows at 100 000.
PROFILE_SAMPLE_ROWS = 100_000
_SAMPLE_SEED = 20_211  # a fixed seed: the same cached frame gives the same profile
_UNIFORM = "_drift_uniform"  # never a feature's name: spec names start with a letter
TRAINING = "training"  # the drift table's reference of training-skew rows (jobs/score/skew.py)
PROFILE_KEY = "feature_profile"  # where an artifact's metrics.json keeps the training profile


def watched(spec: DatasetSpec, cfg: DriftConfig) -> list[Watched]:
    """The features drift compares, in spec order: dense ones, categorical ones with a
    vocabulary, hashed ids only with ``skip_ids: false``; never those in ``skip``."""
    out = []
    for feat in spec.features:
        if feat.name in cfg.skip:
            continue
        if feat.kind == "dense":
            out.append(Watched(feat.name, "dense"))
        elif feat.vocabulary is not None:
            out.append(Watched(feat.name, "categorical",
                               categories=tuple(str(v) for v in vocabulary_values(feat))))
        elif not cfg.skip_ids:
            out.append(Watched(feat.name, "categorical", buckets=cfg.id_buckets,
                               categories=tuple(str(b) for b in range(cfg.id_buckets))))
    return out


def _category_literals(spec: DatasetSpec, w: Watched) -> list[tuple[str, str]]:
    """(category, SQL condition) per category of a watched categorical feature."""
    col = _ident(w.name)
    if w.buckets:
        return [(c, f"pmod({col}, {w.buckets}) = {c}") for c in w.categories]
    values = vocabulary_values(spec.column(w.name))
    return [(str(v), f"{col} = {_literal(v)}") for v in values]


def sample_fraction(rows: int | None, sample_rows: int | None = None) -> float:
    """The share of a day's rows its quantile summaries read: 1 up to ``sample_rows``
    (default :data:`PROFILE_SAMPLE_ROWS`), then ``sample_rows / rows``."""
    target = PROFILE_SAMPLE_ROWS if sample_rows is None else sample_rows
    return 1.0 if not rows or rows <= target else target / rows


def measure(spec: DatasetSpec, frame: DataFrame, features: list[Watched],
            references: dict[str, Reference],
            rows: int | None = None) -> tuple[DayProfile, dict[str, np.ndarray], int]:
    """One aggregate over the rows that passed (``_reason`` null): per feature its nulls, its
    quantile summary (dense) or category counts, and (dense, with a reference) the rows at or
    above each reference edge. ``rows`` (about how many rows pass) sets the quantile
    summaries' sample (:func:`sample_fraction`); everything else is counted on every row.
    Returns the day's profile (ds left empty), the exact dense bin counts and the rows
    measured."""
    probs = profile_probabilities()
    fraction = sample_fraction(rows)
    passed = frame.where(F.col(REASON).isNull())
    if fraction < 1.0:
        passed = passed.withColumn(_UNIFORM, F.rand(_SAMPLE_SEED))
    aggs = [F.count(F.lit(1)).alias("rows")]
    for i, w in enumerate(features):
        col = _ident(w.name)
        aggs.append(F.expr(f"count({col})").alias(f"n{i}"))
        if w.kind == "dense":
            summarised = col if fraction >= 1.0 else f"IF({_UNIFORM} < {fraction!r}, {col}, NULL)"
            aggs.append(F.expr(f"percentile_approx({summarised}, "
                               f"array({', '.join(map(repr, probs))}), "
                               f"{PERCENTILE_ACCURACY})").alias(f"q{i}"))
            ref = references.get(w.name)
            for j, edge in enumerate(ref.edges if ref is not None else []):
                aggs.append(F.expr(f"count_if({col} >= {_literal(float(edge))})").alias(f"g{i}_{j}"))
        else:
            for j, (_, cond) in enumerate(_category_literals(spec, w)):
                aggs.append(F.expr(f"count_if({cond})").alias(f"c{i}_{j}"))
    row = passed.agg(*aggs).first().asDict()
    rows = int(row["rows"])
    profiles: dict[str, FeatureProfile] = {}
    counts: dict[str, np.ndarray] = {}
    for i, w in enumerate(features):
        nonnull = int(row[f"n{i}"])
        if w.kind == "dense":
            q = [float(v) for v in (row[f"q{i}"] or [])]
            profiles[w.name] = FeatureProfile("dense", rows, rows - nonnull, quantiles=q)
            ref = references.get(w.name)
            if ref is not None and ref.edges is not None:
                ge = [float(row[f"g{i}_{j}"]) for j in range(len(ref.edges))]
                counts[w.name] = counts_from_cumulative(ge, nonnull)
        else:
            cats = {c: int(row[f"c{i}_{j}"])
                    for j, (c, _) in enumerate(_category_literals(spec, w))}
            cats[OOV] = nonnull - sum(cats.values())
            profiles[w.name] = FeatureProfile("categorical", rows, rows - nonnull, counts=cats)
    return DayProfile("", profiles), counts, rows


@dataclass
class DriftOutcome:
    """A day's feature drift: its rows, its profile (kept for later references) and what the
    manifest says about it."""

    rows: list[DriftRow]
    profile: DayProfile
    reference_days: int
    wanted_days: int
    skipped: list[str] = field(default_factory=list)

    @property
    def judged(self) -> bool:
        return self.reference_days >= self.wanted_days

    @property
    def drifted(self) -> list[str]:
        """Features drifted over the whole day (segmented drift never fails a day)."""
        return drifted_features(self.day_rows)

    @property
    def day_rows(self) -> list[DriftRow]:
        return [r for r in self.rows if r.segment is None]

    @property
    def drifted_segments(self) -> list[str]:
        """``x0 (platform=ios)`` for each feature drifted within a segment."""
        return list(dict.fromkeys(f"{r.feature} ({r.segment})" for r in self.rows
                                  if r.segment is not None and r.drifted))

    def note(self) -> str:
        ref = self.rows[0].reference if self.rows else describe(None, self.wanted_days)
        if not self.judged:
            return (f"drift not judged: the reference has {self.reference_days} of "
                    f"drift.reference_days {self.wanted_days} validated days")
        within = (f"; within segments: {', '.join(self.drifted_segments)}"
                  if self.drifted_segments else "")
        if self.drifted:
            return (f"drift in {len(self.drifted)} feature(s) against the {ref}: "
                    f"{summary(self.day_rows)}{within}")
        return f"no drift against the {ref}{within}"

    def details(self) -> dict[str, Any]:
        return {"judged": self.judged, "reference_days": self.reference_days,
                "wanted_days": self.wanted_days, "drifted_features": self.drifted,
                "features": sorted({r.feature for r in self.rows}),
                "watched": len(self.profile.features), "note": self.note(),
                "segments": sorted(self.profile.segments),
                "drifted_segments": self.drifted_segments,
                "skipped_partitions": self.skipped}


def column_profile(feature: Watched, values: pd.Series) -> FeatureProfile:
    """A feature's profile from a training column, vectorised (what
    :func:`jobs.validate.drift.profile_values` computes value by value)."""
    if feature.kind == "dense":
        arr = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        present = arr[~np.isnan(arr)]
        quantiles = np.quantile(present, profile_probabilities()).tolist() if len(present) else []
        return FeatureProfile("dense", len(arr), int(len(arr) - len(present)), quantiles=quantiles)
    present = values[values.notna()]
    if feature.buckets:
        keys = (present.astype(np.int64) % feature.buckets).astype(str)
    else:
        keys = present.astype(str)
        keys = keys.where(keys.isin(feature.categories), OOV)
    counts = {c: 0 for c in feature.categories} | {OOV: 0}
    for key, n in keys.value_counts().items():
        counts[str(key)] += int(n)
    return FeatureProfile("categorical", len(values), int(len(values) - len(present)),
                          counts=counts)


def training_profile(spec: DatasetSpec, cfg: DriftConfig, frame: pd.DataFrame) -> dict[str, Any]:
    """The ``feature_profile`` of ``metrics.json``: the training rows' profile of every
    watched feature the frame has."""
    features = {w.name: column_profile(w, frame[w.name]) for w in watched(spec, cfg)
                if w.name in frame.columns}
    return DayProfile(TRAINING, features).to_json()


def segment_values(spec: DatasetSpec, cfg: DriftConfig) -> list[tuple[str, str]]:
    """``(label, SQL condition)`` per value of ``drift.segment_column`` (none when unset); the
    column must be a categorical feature with a vocabulary."""
    if cfg.segment_column is None:
        return []
    try:
        col = spec.column(cfg.segment_column)
    except SpecError:
        col = None
    if getattr(col, "vocabulary", None) is None:
        raise ConfigError(f"drift.segment_column: {cfg.segment_column!r} is not a categorical "
                          f"feature of {spec.name} with a vocabulary")
    return [(f"{col.name}={v}", f"CAST({_ident(col.name)} AS STRING) = {_literal(str(v))}")
            for v in col.vocabulary]


def _drift_rows(spec, frame, features, reference: list[DayProfile], cfg: DriftConfig,
                rows: int | None, segment: str | None = None):
    refs = {w.name: r for w in features if (r := pool(w.name, reference, cfg.bins)) is not None}
    profile, counts, _ = measure(spec, frame, features, refs, rows)
    out: list[DriftRow] = []
    for w in features:
        out += [dataclasses.replace(r, segment=segment) for r in compare(
            w.name, refs.get(w.name), profile.features[w.name], counts.get(w.name),
            cfg.thresholds, cfg.reference_days)]
    return profile, out


def feature_drift(spec: DatasetSpec, ds: str, frame: DataFrame, cfg: DriftConfig,
                  reference: list[DayProfile], skipped: list[str],
                  rows: int | None = None) -> DriftOutcome:
    """Today's drift rows against ``reference`` (the trailing days' profiles); ``rows``: about
    how many rows pass (sets the quantile summaries' sample, :func:`measure`). With
    ``drift.segment_column`` the same again per value of it (one more aggregate each, against
    the same days' profiles of that value's rows)."""
    features = watched(spec, cfg)
    profile, out = _drift_rows(spec, frame, features, reference, cfg, rows)
    profile.ds = ds
    for label, condition in segment_values(spec, cfg):
        part, seg_rows = _drift_rows(spec, frame.where(F.expr(condition)), features,
                                     [p.segment(label) for p in reference if label in p.segments],
                                     cfg, rows, label)
        profile.segments[label] = part.features
        out += seg_rows
    return DriftOutcome(out, profile, len(reference), cfg.reference_days, skipped)
