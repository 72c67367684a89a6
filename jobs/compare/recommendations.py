"""The two models' catalog recommendations, paired (``mmoe compare``, segment
``recommendations`` of ``ab_reports``).

For each day of the range on which both versions wrote recommendations (``mmoe score
--catalog``) and the judged day's interactions exist (ds + ``evaluation.
recommendations_label_offset_days``):

- top-K accuracy per task (``recall@K``, ``ndcg@K``, ``hit_rate@K``, ``precision@K``, as
  :mod:`jobs.evaluate.recommendations` defines them) on the users judged for **both** versions
  (a list from each and a logged positive): pooled over the days as the mean over (day, user)
  rows; the delta's interval is the delta method clustered by user (the per-user sums of the
  differences over the days; on one day it is the paired t interval's normal twin), the
  p-value its normal counterpart, the verdict from the metric's direction at
  ``compare.alpha``;
- the catalog figures (``coverage``, ``exposure_gini``, ``popularity_bias``, ``diversity``,
  ``novelty``, task ``all``): each version's value per day, pooled as the mean over the days;
  they are not sums over users, so they carry no interval and their verdict is
  ``not_tested``.

These rows are reported beside the logged-traffic verdicts and are not adjusted with them
(their ``p_value_adjusted`` is the raw p-value, ``ci_level`` 1 - alpha); the ship decision is
made on the logged traffic.
"""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from scipy import stats

from jobs.core import metric_registry
from jobs.core.config import JobConfig
from jobs.core.tables import DatasetTables
from jobs.evaluate.recommendations import (
    CATALOG_TASK,
    SEGMENT,
    catalog_rows,
    judged_day,
    judged_lists,
    user_accuracy,
)
from schemas.spec import DatasetSpec

NOT_TESTED = "not_tested"


def recommendation_days(cfg: JobConfig, spec: DatasetSpec, tb: DatasetTables,
                        versions: list[str], days: list[str]) -> list[str]:
    """The days both versions have recommendations and the judged day has interactions."""
    if spec.catalog is None:
        return []
    out = []
    for day in days:
        judged = judged_day(cfg, day)
        if all(tb["recommendations"].exists(day, model_version=v) for v in versions) and \
                tb["features"].exists(judged) and tb["labels"].exists(judged):
            out.append(day)
    return out


def _paired_user_sums(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec, days: list[str],
                      baseline: str, candidate: str):
    """Per (task, metric, user): the sums over days of both versions' values and the count of
    (day, user) rows judged for both; and the catalog figures per (day, version)."""
    cat = spec.catalog
    user, item = cat.user_key, cat.item_key
    per_user, catalog = [], []
    for day in days:
        judged = judged_lists(spark, cfg, spec, day, [baseline, candidate])
        lists = judged.lists.persist()
        try:
            for task in spec.task_names:
                values, names = user_accuracy(lists, judged.logs, task, user, item, judged.ks)
                b = values.where(F.col("model_version") == baseline).drop("model_version")
                c = values.where(F.col("model_version") == candidate).drop("model_version")
                both = b.select(user, *(F.col(m).alias(f"b|{m}") for m in names)).join(
                    c.select(user, *(F.col(m).alias(f"c|{m}") for m in names)), user, "inner")
                per_user.append((task, names, both.toPandas()))
            catalog.append(catalog_rows(spark, lists, judged.items, judged.logs, user, item,
                                        cat.rank_by, cat.category).toPandas().assign(day=day))
        finally:
            lists.unpersist()
    return per_user, catalog


def _verdict(metric: str, low: float, high: float) -> str:
    if not (math.isfinite(low) and math.isfinite(high)) or low <= 0 <= high:
        return "no_difference"
    return "better" if metric_registry.is_better(metric, 0.0, low if low > 0 else high) \
        else "worse"


def paired_rows(per_user, catalog, baseline: str, candidate: str, user: str,
                alpha: float) -> pd.DataFrame:
    """The ab_reports rows (pooled, segment ``recommendations``) from the per-user values and
    the catalog figures (module docstring)."""
    z = float(stats.norm.ppf(1.0 - alpha / 2.0))
    rows = []
    by_task: dict[str, list[pd.DataFrame]] = {}
    names_of: dict[str, list[str]] = {}
    for task, names, frame in per_user:
        by_task.setdefault(task, []).append(frame)
        names_of[task] = names
    for task, frames in by_task.items():
        frame = pd.concat(frames, ignore_index=True)
        grouped = frame.groupby(user)
        n_u = grouped.size().to_numpy(dtype=np.float64)
        total = n_u.sum()
        for m in names_of[task]:
            b_u = grouped[f"b|{m}"].sum().to_numpy()
            c_u = grouped[f"c|{m}"].sum().to_numpy()
            if total == 0:
                continue
            b, c = b_u.sum() / total, c_u.sum() / total
            delta = c - b
            infl = ((c_u - b_u) - delta * n_u) / total
            se = float(np.sqrt(len(n_u) / (len(n_u) - 1) * np.sum(infl ** 2))) \
                if len(n_u) > 1 else float("nan")
            low, high = delta - z * se, delta + z * se
            p = float(2 * stats.norm.sf(abs(delta) / se)) if se > 0 else \
                (1.0 if delta == 0 else 0.0)
            rows.append({"task": task, "metric": m, "baseline_value": b, "candidate_value": c,
                         "delta": delta, "ci_low": low, "ci_high": high, "p_value": p,
                         "verdict": _verdict(m, low, high), "n": int(total), "se": se,
                         "method": "delta_user"})
    if catalog:
        figures = pd.concat(catalog, ignore_index=True)
        for metric, g in figures.groupby("metric", sort=False):
            by = g.groupby("model_version")["value"].mean()
            n = int(g[g["model_version"] == candidate]["n"].sum())
            if baseline in by and candidate in by:
                rows.append({"task": CATALOG_TASK, "metric": metric,
                             "baseline_value": by[baseline], "candidate_value": by[candidate],
                             "delta": by[candidate] - by[baseline], "ci_low": None,
                             "ci_high": None, "p_value": None, "verdict": NOT_TESTED, "n": n,
                             "se": None, "method": "days_mean"})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["segment"] = SEGMENT
    out["p_value_adjusted"] = out["p_value"]
    out["ci_level"] = 1.0 - alpha
    out["ci_low_raw"], out["ci_high_raw"] = out["ci_low"], out["ci_high"]
    out["scope"] = "all"
    return out


def recommendation_section(spark: SparkSession, cfg: JobConfig, spec: DatasetSpec,
                           tb: DatasetTables, baseline: str, candidate: str,
                           days: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The paired rows (in compare's report layout, scope ``all``) and the days they cover;
    empty where no day has both versions' recommendations."""
    rec_days = recommendation_days(cfg, spec, tb, [baseline, candidate], days)
    if not rec_days:
        return pd.DataFrame(), []
    per_user, catalog = _paired_user_sums(spark, cfg, spec, rec_days, baseline, candidate)
    return paired_rows(per_user, catalog, baseline, candidate, spec.catalog.user_key,
                       cfg.compare.alpha), rec_days


def _f(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}g}"


def html_section(rows: pd.DataFrame, days: list[str], tasks: list[str]) -> str:
    """Paired figures of both versions' recommendations, as a table."""
    if rows is None or rows.empty:
        return ""
    order = {t: i for i, t in enumerate([*tasks, CATALOG_TASK])}
    rows = rows.assign(_t=rows["task"].map(order), _m=rows["metric"].map(metric_registry.rank))
    body = "".join(
        f"<tr class={html.escape(r['verdict'])}><td class=l>{html.escape(r['task'])}</td>"
        f"<td class=l>{html.escape(r['metric'])}</td><td>{_f(r['baseline_value'])}</td>"
        f"<td>{_f(r['candidate_value'])}</td><td>{_f(r['delta'], 3)}"
        + (f" [{_f(r['ci_low'], 3)}, {_f(r['ci_high'], 3)}]" if r["ci_low"] is not None
           and not pd.isna(r["ci_low"]) else "")
        + f"</td><td class=l>{html.escape(r['verdict']).replace('_', ' ')}</td>"
        f"<td>{int(r['n']):,}</td></tr>"
        for r in rows.sort_values(["_t", "_m"]).to_dict("records"))
    return ("<h2>Recommendations (catalog top-K, paired by user)</h2>"
            f"<p class=sub>lists of {html.escape(', '.join(days))}; accuracy over users judged "
            "for both versions, 95% interval clustered by user; catalog figures: the mean over "
            "the days, no interval (not a sum over users)</p><div class=wide><table><tr>"
            "<th class=l>task</th><th class=l>metric</th><th>baseline</th><th>candidate</th>"
            "<th>delta [95% CI]</th><th class=l>verdict</th><th>n</th></tr>"
            f"{body}</table></div>")


__all__ = ["recommendation_section", "paired_rows", "recommendation_days", "html_section",
           "NOT_TESTED"]
