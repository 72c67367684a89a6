"""compare_models on a tiny two-day synth warehouse: pairing counts when the versions cover
different rows, pooled and per-day values against sklearn / the pure DeLong, the ab_reports table
replaced on rerun, one-line refusals, gate diagnostics."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _frames import random_features
from browser import visit
from matplotlib.collections import LineCollection, PolyCollection
from sklearn.metrics import roc_auc_score

from jobs.compare import stats
from jobs.compare.records import TOO_SMALL
from jobs.compare.report import daily_figure, reliability_bins, task_figure
from jobs.compare.stage import compare_models, compute_records, labelled_pairs, stack_tasks
from jobs.core.errors import InputError, MissingInputError
from jobs.core.warehouse import Warehouse, read_table
from jobs.score.drift import prediction_drift
from schemas.spec import load_spec
from schemas.tables import labels_arrow_schema

DAYS = ["2026-11-02", "2026-11-03"]
N = 300
EXPERTS = 4


@pytest.fixture(scope="module")
def spec():
    return load_spec("synth")


def _predictions(spec, ids, labels, noise, rng, gates=False) -> pa.Table:
    cols = {"impression_id": pa.array(ids, pa.int64())}
    lab = labels.set_index("impression_id").reindex(ids)
    for t in spec.task_names:
        y = lab[t].fillna(0).to_numpy()
        cols[f"p_{t}"] = pa.array(np.round(1 / (1 + np.exp(-(2 * y - 1 + noise * rng.normal(size=len(ids))))), 3))
    cols["scored_at"] = pa.array([dt.datetime(2026, 11, 4)] * len(ids), pa.timestamp("us", "UTC"))
    if gates:
        for t in spec.task_names:
            w = rng.dirichlet([20.0, 1.0, 1.0, 0.01], size=len(ids)).astype(np.float32)
            cols[f"gate_{t}"] = pa.array(list(w), pa.list_(pa.float32()))
    return pa.table(cols)


def _write(path, table):
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path / "part-0.parquet")


@pytest.fixture
def warehouse(job_config, spec):
    rng = np.random.default_rng(3)
    wh = Warehouse(job_config.warehouse)
    job_config.compare.replicates = 30
    for i, ds in enumerate(DAYS):
        ids = np.arange(N, dtype=np.int64) + i * 10_000
        _write(wh.partition(spec.name, "features", ds),
               random_features(spec, rng, N, users=30, first_key=i * 10_000))
        labels = pd.DataFrame({"impression_id": ids, **{t: rng.integers(0, 2, N).astype(np.int32)
                                                       for t in spec.task_names}})
        labelled = labels.iloc[7:]  # 7 rows per day have no labels
        _write(wh.partition(spec.name, "labels", ds),
               pa.Table.from_pandas(labelled, schema=labels_arrow_schema(spec), preserve_index=False))
        # A scores every row plus 10 unknown ones; B skips the first 3 rows and adds 4 of its own
        a_ids = np.concatenate([ids, ids[-1] + 1 + np.arange(10)])
        _write(wh.partition(spec.name, "predictions", ds, model_version="A"),
               _predictions(spec, a_ids, labels, 2.0, rng, gates=True))
        _write(wh.partition(spec.name, "predictions", ds, model_version="B"),
               _predictions(spec, np.concatenate([ids[3:], ids[-1] + 100 + np.arange(4)]), labels,
                            1.0, rng, gates=True))
    # each arm's prediction drift (what `mmoe score` writes): day 2 against day 1
    job_config.drift = dataclasses.replace(job_config.drift, reference_days=1)
    for ds in DAYS:
        for v in ("A", "B"):
            prediction_drift(job_config, spec, ds, v,
                             wh.partition(spec.name, "predictions", ds, model_version=v))
    return wh


def _oracle_rows(wh, spec, days):
    frames = []
    for ds in days:
        read = lambda table, **more: read_table(wh.partition(spec.name, table, ds, **more)).to_pandas()
        a = read("predictions", model_version="A").drop(columns=["scored_at"])
        b = read("predictions", model_version="B").drop(columns=["scored_at"])
        frames.append(a.merge(b, on="impression_id", suffixes=("_a", "_b"))
                      .merge(read("labels"), on="impression_id")
                      .merge(read("features")[["impression_id", "platform", "user_cohort", "user_id"]],
                             on="impression_id")
                      .assign(day=ds))
    return pd.concat(frames, ignore_index=True)


def test_pairing_values_rerun_and_gates(spark, job_config, spec, warehouse, chromium):
    result = compare_models(spark, job_config, spec, "A", "B", DAYS[0], DAYS[1])
    p = result.pairing
    assert (p.baseline_rows, p.candidate_rows) == (2 * (N + 10), 2 * (N - 3 + 4))
    assert (p.paired_rows, p.baseline_only_rows, p.candidate_only_rows) == (2 * (N - 3), 2 * 13, 2 * 4)
    assert p.paired_without_labels == 2 * (7 - 3)
    rec = result.record()
    assert rec.details["pairing"]["labelled_rows"] == 2 * (N - 7)
    # propensities in the features but no candidates table: no off-policy estimate, said so
    assert rec.details["counterfactual"]["status"] == "no_propensities"
    assert "policy_values" not in result.outputs
    assert "Not estimated: no day of" in open(result.outputs["html"]).read()
    assert rec.input_rows == p.baseline_rows + p.candidate_rows

    table = read_table(warehouse.ab_report(spec.name, "A", "B", *DAYS)).to_pandas()
    assert rec.output_rows == len(table)
    assert set(table.columns) >= {"baseline", "candidate", "task", "segment", "metric", "baseline_value",
                                  "candidate_value", "delta", "ci_low", "ci_high", "p_value",
                                  "p_value_adjusted", "verdict", "n", "day"}
    rows = _oracle_rows(warehouse, spec, DAYS)
    for day, scope_rows in [(None, rows)] + [(dt.date.fromisoformat(d), rows[rows.day == d]) for d in DAYS]:
        for t in spec.task_names:
            for seg, sub in (("all", scope_rows), ("platform=ios", scope_rows[scope_rows.platform == "ios"])):
                got = table[(table.task == t) & (table.segment == seg) & (table.metric == "auc")
                            & (table.day.isna() if day is None else table.day == day)]
                assert len(got) == 1, (day, t, seg)
                got = got.iloc[0]
                want = stats.delong(sub[t].to_numpy(), sub[f"p_{t}_a"].to_numpy(), sub[f"p_{t}_b"].to_numpy())
                assert got.baseline_value == pytest.approx(roc_auc_score(sub[t], sub[f"p_{t}_a"]), abs=1e-12)
                assert got.delta == pytest.approx(want.delta, abs=1e-12)
                assert got.p_value == pytest.approx(want.p_value, abs=1e-9)
                assert got.n == len(sub)
    # candidate (less noise) wins on every task
    assert result.decision.tasks == {t: "better" for t in spec.task_names}
    adjusted = table.p_value_adjusted.notna()   # too-small slices have none
    assert (table.p_value_adjusted[adjusted] >= table.p_value[adjusted]).all()
    # gates: task mass mostly on expert 0 (Dirichlet(20, 1, 1, 0.01)): collapsed? 20/22 = 0.91
    g = result.gates["candidate"]["tasks"]["click"]
    assert g["experts"] == EXPERTS and g["rows"] == 2 * (N - 3 + 4)
    assert g["mean_weight"][0] == pytest.approx(20 / 22.01, abs=0.02)
    assert 3 in g["dead_experts"] and g["collapsed"] is True

    # a rerun replaces the report's rows (no duplicates), other pairs stay
    again = compare_models(spark, job_config, spec, "A", "B", DAYS[0], DAYS[1])
    table2 = read_table(warehouse.ab_report(spec.name, "A", "B", *DAYS)).to_pandas()
    assert len(table2) == len(table)
    pd.testing.assert_frame_equal(table2, table)
    assert sorted(p.name for p in warehouse.table(spec.name, "ab_reports").iterdir()) == \
        ["_docs", "report=A_vs_B_2026-11-02_2026-11-03"]
    # the HTML report as a user sees it: offline, no console error, every figure and table shown
    page = visit(chromium, again.outputs["html"], PROBES, full_page=True)
    assert page.errors == [] and page.requests == []
    # a figure row per task, per-day deltas, gates; tables: tasks, versions, pairing, verdicts,
    # the segment columns with a difference, one prediction drift table per arm, and those
    # under <details> (closed: Chromium still lays them out): reliability bins, undecided segments
    segs = table[table.day.isna() & (table.segment != "all")
                 & ~table.segment.isin([f"{t}=1" for t in spec.task_names])]
    decided = {s.split("=")[0] for s in segs[segs.verdict.isin(["better", "worse"])].segment}
    # one figure row per task shown: the spec's and each conditional pair's joint task
    assert page.images == len(spec.task_names) + len(spec.conditional_tasks) + 2
    ranked = table.metric.str.contains("@").any()      # the ranking table leads the verdicts
    conditional = table.segment.str.endswith("=1").any()  # the child among parent positives
    assert page.tables == 4 + ranked + conditional + len(decided) + 2 + len(page.probes["collapsed"])
    assert "Prediction drift" in page.text and "candidate B" in page.text and "p_click" in page.text
    (job_config.warehouse.parent / "compare.png").write_bytes(page.screenshot)
    assert page.screenshot[:8] == b"\x89PNG\r\n\x1a\n" and len(page.screenshot) > 50_000
    summary = open(again.outputs["summary"]).read()
    assert "**SHIP**" in summary and "| click | better |" in summary
    _check_report_reads_right(spec, again, table, page, summary)


PROBES = {
    "h1": "document.querySelector('h1').innerText",
    "tasks": "[...document.querySelectorAll('table.tasks tr')].slice(1).map(tr => tr.cells[0].innerText)",
    "verdict_tasks": "[...document.querySelectorAll('h2')].find(h => h.innerText.startsWith('Pointwise'))"
                     ".nextElementSibling.querySelector('table').innerText.split('\\n').slice(1)"
                     ".map(line => line.split('\\t')[0])",
    "versions": "[...document.querySelectorAll('table.versions tr')].map(tr =>"
                " [...tr.cells].map(c => c.innerText))",
    "segment_groups": "[...document.querySelectorAll('h3')].map(h => h.innerText)",
    "collapsed": "[...document.querySelectorAll('details')].map(d => [d.open,"
                 " d.querySelectorAll('tr').length])",
    "reliability": "[...document.querySelectorAll('table.reliability')].map(t =>"
                   " [...t.rows].slice(1).map(r => [r.cells[0].textContent,"
                   " Number(r.cells[2].textContent.replace(/,/g, ''))]))",
    "number_cells": "[...document.querySelectorAll('td:not(.l)')].map(td => getComputedStyle(td)"
                    ".whiteSpace)",
}


def _check_report_reads_right(spec, result, table, page, summary):
    """Issue 22, item 9: one task order (the spec's) everywhere, what each version is, a date
    axis with one tick per day and per-day error bars, quantile reliability bins whose rows add
    up, segments grouped with the undecided rows collapsed, baseline before candidate."""
    # the spec's order, then each conditional pair's joint task
    tasks = spec.task_names + [f"{p}_and_{c}" for p, c in spec.conditional_tasks]
    assert tasks != sorted(tasks)  # the spec's order is not the alphabet: the check can fail
    assert result.tasks == tasks
    assert page.probes["tasks"] == spec.task_names  # the decision's tasks (joint ones do not decide)
    assert list(dict.fromkeys(page.probes["verdict_tasks"])) == tasks
    assert list(dict.fromkeys(table.task)) == tasks
    assert list(dict.fromkeys(table[table.day.isna()].task)) == tasks
    # the title and the folder agree: baseline A first, as in report=A_vs_B_...
    assert page.probes["h1"] == f"{spec.name}: baseline A vs candidate B"
    assert summary.startswith("### A/B baseline `A` vs candidate `B`")
    versions = {row[0]: row[1:] for row in page.probes["versions"]}
    assert versions["version"] == ["A", "B"] and versions["registered"] == ["not registered"] * 2
    assert {"architecture", "epochs run", "training range", "aliases"} <= set(versions)

    fig = daily_figure(result.report, tasks)
    arms = [ax for ax in fig.axes if ax.get_title().endswith("ndcg@10 per day")]
    assert len(arms) == len(tasks)       # the first row: ndcg@10 of both arms per task
    for ax in arms:
        assert [t.get_text() for t in ax.get_xticklabels()] == DAYS
        assert sorted(line.get_label() for line in ax.get_lines()) == ["baseline", "candidate"]
        assert all(len(line.get_xdata()) == len(DAYS) for line in ax.get_lines())
    for ax in fig.axes:
        if ax in arms:
            continue
        assert [t.get_text() for t in ax.get_xticklabels()] == DAYS  # one tick per day, a date
        assert not any(isinstance(c, PolyCollection) for c in ax.collections)  # no band of steps
        bars = [c for c in ax.collections if isinstance(c, LineCollection)]
        assert len(bars) == 1 and len(bars[0].get_segments()) == len(DAYS)  # an error bar a day
    labelled = 2 * (N - 7)
    shown = page.probes["reliability"]
    assert len(shown) == len(tasks)
    for t, rows in zip(tasks, shown):
        for arm in ("baseline", "candidate"):
            bins = reliability_bins(result.plots[t][arm])
            assert sum(b["rows"] for b in bins) == labelled and 5 <= len(bins) <= 10
            assert sum(n for a, n in rows if a == arm) == labelled
            assert max(b["rows"] for b in bins) <= 0.3 * labelled  # quantile bins, not 0-1 ones
        ax = task_figure(t, result.plots[t], {}).axes[2]
        assert "log-odds" in ax.get_xlabel() and ax.get_xlim()[0] < 0 < ax.get_xlim()[1]

    groups = page.probes["segment_groups"]
    assert groups == [c for c in result.segments if (table.segment.str.startswith(c + "=")).any()]
    assert page.probes["collapsed"] and all(not is_open for is_open, _ in page.probes["collapsed"])
    assert set(page.probes["number_cells"]) == {"nowrap"}


def test_browser_check_sees_errors_and_requests(chromium, tmp_path):
    """The checker itself: a page that logs an error and fetches from the network is caught."""
    page = tmp_path / "bad.html"
    page.write_text("<html><body><table><tr><td>x</td></tr></table>"
                    "<script>console.error('boom'); undefined_call();</script>"
                    "<img src='http://192.0.2.1/x.png'></body></html>")
    seen = visit(chromium, page)
    assert any("boom" in e for e in seen.errors) and any("exception" in e for e in seen.errors)
    assert seen.requests == ["http://192.0.2.1/x.png"] and seen.tables == 1 and seen.images == 0


def test_refusals(spark, job_config, spec, warehouse):
    with pytest.raises(InputError, match="same version"):
        compare_models(spark, job_config, spec, "A", "A", DAYS[0], DAYS[1])
    with pytest.raises(MissingInputError, match="candidate C has no predictions .*present.*A, B|candidate C has no predictions"):
        compare_models(spark, job_config, spec, "A", "C", DAYS[0], DAYS[1])
    # C scores rows nobody else scored
    rng = np.random.default_rng(0)
    labels = pd.DataFrame({"impression_id": [], **{t: [] for t in spec.task_names}})
    _write(warehouse.partition(spec.name, "predictions", DAYS[0], model_version="C"),
           _predictions(spec, np.arange(5) + 900_000, labels, 1.0, rng))
    with pytest.raises(MissingInputError, match="share no rows"):
        compare_models(spark, job_config, spec, "A", "C", DAYS[0], DAYS[1])


def test_cli_gates_on_regression_and_refuses_in_one_line(spark, job_config, spec, warehouse):
    import json

    from typer.testing import CliRunner

    from jobs.cli import app

    runner = CliRunner()
    base = ["--warehouse", str(job_config.warehouse), "compare", "--dataset", "synth",
            "--start", DAYS[0], "--end", DAYS[1]]
    # B is the better model: with A as the candidate the AUC guardrail breaks -> exit 3
    result = runner.invoke(app, [*base, "--baseline", "B", "--candidate", "A", "--segment", "platform",
                                 "--fail-on-regression"])
    assert result.exit_code == 3, result.output
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and "breaks" in err[0] and "auc regressed" in err[0]
    manifest = json.loads(result.stdout.strip().splitlines()[-1])
    assert manifest["status"] == "failed" and manifest["ds"] == DAYS[1]
    assert manifest["details"]["pairing"]["candidate_only_rows"] == 2 * 13
    assert manifest["details"]["decision"]["ship"] is False
    assert manifest["details"]["segments"] == ["platform"]
    assert open(manifest["outputs"]["summary"]).read().count("DO NOT SHIP") == 1
    # the summary a person reads (printed on success; a failed run has only its error line),
    # from the same manifest: decision, every task's verdict, the reasons, the report's path
    from jobs.cli.summary import compare_summary

    decision = manifest["details"]["decision"]
    lines = compare_summary(manifest).splitlines()
    assert lines[0] == f"compare synth {DAYS[0]}..{DAYS[1]}: candidate A vs baseline B: NO SHIP"
    assert lines[1].endswith(", ".join(f"{t} {v}" for t, v in decision["tasks"].items()))
    shown = [line[4:] for line in lines if line.startswith("  - ")]
    reasons = decision["reasons"]
    assert shown[:5] == reasons[:5] and len(shown) == min(len(reasons), 6)
    if len(reasons) > 5:
        assert shown[5] == f"... and {len(reasons) - 5} more reason(s) (the report lists every one)"
    assert f"  report: {manifest['outputs']['html']}" in lines
    table = read_table(warehouse.ab_report(spec.name, "B", "A", *DAYS)).to_pandas()
    assert set(table.segment) == {"all", "platform=android", "platform=ios", "platform=web",
                                  "click=1"}
    assert manifest["output_rows"] == len(table)

    result = runner.invoke(app, [*base, "--baseline", "A", "--candidate", "A"])
    assert result.exit_code == 2 and result.stderr.strip().count("\n") == 0
    assert "same version" in result.stderr


def _bh(p):
    """Benjamini-Hochberg by its definition: min over p_j >= p_i of m p_j / rank_j."""
    m, out = len(p), np.empty(len(p))
    ranks = np.array([(p <= q).sum() for q in p])
    for i in range(m):
        out[i] = min(1.0, min(m * p[j] / ranks[j] for j in range(m) if p[j] >= p[i]))
    return out


def test_crossed_slices_small_ones_and_gates(spark, job_config, spec, warehouse, chromium):
    """compare.segments crossing platform x user_cohort: each combination's AUC and n equal
    sklearn's on the oracle rows; a combination under compare.min_slice_rows (for a ranking
    metric, its requests with a positive under min_slice_requests) is too_small: no adjusted
    p-value, and not one of the tests the others are adjusted for (theirs equal BH over the judged
    rows alone). A gate on a too-small slice is n/a, the report lists every gate."""
    rows = _oracle_rows(warehouse, spec, DAYS)
    sizes = rows.groupby(["platform", "user_cohort"]).size()
    c = job_config.compare
    c.segments = ["platform,user_cohort"]
    c.min_slice_rows = int(sizes.median()) + 1
    c.min_slice_requests = 15
    small, big = sizes.idxmin(), sizes.idxmax()
    name = lambda key: f"platform={key[0]} & user_cohort={key[1]}"
    c.gates = [{"task": "click", "metric": "auc", "segment": name(big), "min": 0.0},
               {"task": "click", "metric": "auc", "segment": name(small), "min": 0.0},
               {"task": "click", "metric": "auc", "segment": name(big), "min": 1.01}]
    result = compare_models(spark, job_config, spec, "A", "B", DAYS[0], DAYS[1])
    table = read_table(warehouse.ab_report(spec.name, "A", "B", *DAYS)).to_pandas()
    pooled = table[table.day.isna()]
    assert result.segments == ["platform & user_cohort"]
    crossed = pooled[pooled.segment.str.contains(" & ")]
    assert set(crossed.segment) == {name(k) for k in sizes.index}
    for key, n in sizes.items():
        sub = rows[(rows.platform == key[0]) & (rows.user_cohort == key[1])]
        got = crossed[(crossed.segment == name(key)) & (crossed.task == "like")]
        auc = got[got.metric == "auc"].iloc[0]
        assert auc.n == n and auc.baseline_value == pytest.approx(
            roc_auc_score(sub["like"], sub["p_like_a"]), abs=1e-12)
        pointwise = got[~got.metric.str.contains("@|mrr")]
        assert set(pointwise.verdict == TOO_SMALL) == {n < c.min_slice_rows}
        ranked = got[got.metric.str.contains("@|mrr")]
        assert ((ranked.verdict == TOO_SMALL) == (ranked.n < c.min_slice_requests)).all()
    judged = table.verdict != TOO_SMALL
    assert (~judged).any() and judged.any()
    assert table.loc[~judged, "p_value_adjusted"].isna().all()
    assert table.loc[~judged, "ci_low"].isna().all()
    p = table.loc[judged, "p_value"].to_numpy()
    np.testing.assert_allclose(table.loc[judged, "p_value_adjusted"], _bh(p), atol=1e-12)
    assert [g["status"] for g in result.decision.gates] == ["passed", "n/a", "failed"]
    assert result.decision.ship is False and any("gate failed" in r for r in result.decision.reasons)
    page = visit(chromium, result.outputs["html"], {
        "gates": "[...[...document.querySelectorAll('h2')].find(h => h.innerText.startsWith("
                 "'Decision gates')).nextElementSibling.rows].slice(1).map(r => r.cells[2].innerText)",
        "slices": "[...document.querySelectorAll('h3')].map(h => h.innerText)"})
    assert page.errors == [] and page.probes["gates"] == ["passed", "n/a", "failed"]
    assert page.probes["slices"] == ["platform & user_cohort"]
    assert "too small to judge" in page.text
    assert "| click / " + name(small) + " auc: candidate >= 0 | slice too small" in \
        open(result.outputs["summary"]).read()


def test_evaluate_writes_gate_metrics(spark, job_config, spec, warehouse):
    from jobs.evaluate.stage import evaluate_partition

    result = evaluate_partition(spark, job_config, spec, DAYS[0])
    got = {(r["model_version"], r["task"], r["metric"]): r for r in
           result.metrics.where("metric LIKE 'gate_%'").collect()}
    for v in ("A", "B"):
        preds = read_table(warehouse.partition(spec.name, "predictions", DAYS[0], model_version=v)).to_pandas()
        for t in spec.task_names:
            w = np.stack(preds[f"gate_{t}"].to_numpy()).astype(np.float64)
            entropy = -(np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0)).sum(axis=1) / np.log(EXPERTS)
            mean = w.mean(axis=0)
            assert got[(v, t, "gate_entropy")]["value"] == pytest.approx(entropy.mean(), rel=1e-5)
            assert got[(v, t, "gate_max_share")]["value"] == pytest.approx(mean.max() / mean.sum(), rel=1e-6)
            assert got[(v, t, "gate_entropy")]["n"] == len(preds)
            assert got[(v, t, "gate_entropy")]["segment"] == "all"


def test_compare_bench_smoke(spark, job_config, tmp_path):
    from jobs.bench import bench_compare

    job_config.compare.replicates = 20
    results = tmp_path / "bench.md"
    result = bench_compare(job_config, rows=2000, results=results)
    assert result["rows"] == result["paired_rows"] == 2000
    assert result["compare_over_evaluate"] == pytest.approx(
        result["compare_seconds"] / result["evaluate_seconds"], rel=0.05, abs=0.01)
    table = read_table(Warehouse(Warehouse(job_config.warehouse).bench_root()).ab_report(
        "synth", "bench-champion", "bench-challenger", "2026-01-01", "2026-01-01"))
    assert result["report_rows"] == table.num_rows
    assert '"compare_over_evaluate"' in results.read_text()
    cf = result["counterfactual"]
    assert cf["logged_rows"] == 2000 and cf["candidate_rows"] == 2000 * 5
    assert cf["counterfactual_over_compare"] == pytest.approx(
        cf["with_counterfactual_seconds"] / cf["compare_seconds"], rel=0.05, abs=0.01)
    # 2 arms x 2 policies x 3 tasks x 3 estimators, their 18 differences, 9 logged rows
    assert cf["policy_value_rows"] == 36 + 18 + 9


def test_bootstrap_se_is_clustered_by_user(spark, spec):
    """30 users x 20 rows whose log-loss difference is nearly constant within a user, through
    the stage's Spark transforms (user cluster column, task stacking, the per-group records on
    the executors): the bootstrap SE must match the analytic user-clustered SE (a row-clustered
    bootstrap is ~sqrt(20) times smaller) and the interval must be delta +- z * SE."""
    rng = np.random.default_rng(17)
    users, per_user = 30, 20
    n = users * per_user
    uid = np.repeat(np.arange(users), per_user)
    y = rng.integers(0, 2, users)[uid]
    p_b = np.clip(0.5 + 0.02 * rng.normal(size=n), 0.05, 0.95)
    p_c = np.clip(1 / (1 + np.exp(-(rng.normal(0, 1.5, users)[uid] + 0.05 * rng.normal(size=n)))), 0.05, 0.95)
    t = spec.task_names[0]
    day = dt.date(2026, 11, 5)
    paired = spark.createDataFrame(pd.DataFrame({
        "impression_id": np.arange(n, dtype=np.int64), "day": [day] * n, f"b_{t}": p_b, f"c_{t}": p_c,
        f"y_{t}": y.astype(np.int32), "_in_b": True, "_in_c": True, "_labelled": True}))
    features = spark.createDataFrame(pd.DataFrame({"impression_id": np.arange(n, dtype=np.int64),
                                                   "day": [day] * n, "user_id": uid.astype(np.int64)}))
    rows = labelled_pairs(paired, features, ["impression_id"], spec.user_column, [])
    records = compute_records(stack_tasks(rows, [t], [], False), [], 400, 7, 0.05).toPandas()

    d = -(y * np.log(p_c) + (1 - y) * np.log(1 - p_c)) + (y * np.log(p_b) + (1 - y) * np.log(1 - p_b))
    resid = d - d.mean()
    se_user = np.sqrt(np.sum(np.bincount(uid, weights=resid) ** 2)) / n   # analytic, clustered by user
    se_row = np.sqrt(np.sum(resid ** 2)) / n
    assert se_user > 3 * se_row                                            # the data tells them apart
    got = records[(records.segment == "all") & (records.metric == "logloss")].iloc[0]
    assert got.delta == pytest.approx(d.mean(), abs=1e-9)
    assert got.se == pytest.approx(se_user, rel=0.2), (got.se, se_user, se_row)
    z = 1.959963984540054
    assert got.ci_low == pytest.approx(got.delta - z * got.se, abs=1e-9)
    assert got.ci_high - got.ci_low == pytest.approx(2 * z * se_user, rel=0.2)
