"""Catalog scoring (jobs/score/catalog.py): factored vs joined-row scoring, ties, the job."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from jobs.core.manifest import RunManifest
from jobs.core.spark import session_conf
from jobs.core.warehouse import Warehouse
from jobs.score.catalog import (
    recommend_candidates,
    recommend_grid,
    recommend_rows,
    score_catalog,
)
from mmoe_model.artifact import ModelArtifact, save_artifact
from mmoe_model.features import FeatureEncoder, InputLayout
from mmoe_model.models import ModelConfig, build_model
from mmoe_model.sample import sample_frame
from schemas import load_spec
from schemas.tables import features_arrow_schema

DS = "2026-11-02"
SPEC = load_spec("synth")
SCHEMA = features_arrow_schema(SPEC)
CAT = SPEC.catalog
NOW = dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def tables():
    """users (40, one with no row: user 39 is only a candidate) and items (30, item 29 likewise),
    with nulls in their nullable columns."""
    frame = sample_frame(SPEC, 400, seed=9, null_fraction=0.2, oov_fraction=0.0)
    table = pa.Table.from_pandas(frame[SCHEMA.names], schema=SCHEMA, preserve_index=False)
    users = table.select(list(CAT.user_features)).slice(0, 39)
    users = users.set_column(0, CAT.user_key, pa.array(np.arange(39, dtype=np.int64) * 7 + 1))
    items = table.select(list(CAT.item_features)).slice(100, 29)
    items = items.set_column(0, CAT.item_key, pa.array(np.arange(29, dtype=np.int64) * 5 + 2))
    assert users.column("user_age").null_count and items.column("item_price").null_count
    rng = np.random.default_rng(0)
    user_keys = np.r_[np.arange(39) * 7 + 1, 999_999]          # + a user with no features row
    item_keys = np.r_[np.arange(29) * 5 + 2, 888_888]          # + an item with no features row
    pairs = {(int(u), int(i)) for u in user_keys for i in rng.choice(item_keys, 12)}
    pairs = sorted(pairs)
    candidates = pa.table({CAT.user_key: pa.array([p[0] for p in pairs], pa.int64()),
                           CAT.item_key: pa.array([p[1] for p in pairs], pa.int64())})
    return users, items, candidates


@pytest.fixture(scope="module")
def model(tmp_path_factory, tables):
    torch.manual_seed(4)
    config = ModelConfig(arch="mmoe", num_experts=3, expert_hidden=(16,), expert_dim=8,
                         tower_hidden=(8,))
    net = build_model(config, InputLayout.from_spec(SPEC), len(SPEC.tasks)).eval()
    frame = sample_frame(SPEC, 500, seed=1)
    out = tmp_path_factory.mktemp("catalog-model") / "mmoe"
    save_artifact(out, net, config, SPEC, FeatureEncoder.fit(SPEC, frame))
    artifact = ModelArtifact.load(out)
    return out, artifact.files, artifact


def _oracle(artifact, users: pa.Table, items: pa.Table, candidates: pa.Table) -> pd.DataFrame:
    """In-process: join the features on with pandas (left), score every joined row."""
    pairs = candidates.to_pandas()
    joined = pairs.merge(users.to_pandas(), on=CAT.user_key, how="left") \
        .merge(items.to_pandas(), on=CAT.item_key, how="left")
    cols = {}
    for f in SPEC.features:
        if f.name in joined:
            cols[f.name] = pa.array(joined[f.name], type=SCHEMA.field(f.name).type, from_pandas=True)
        else:
            cols[f.name] = pa.nulls(len(joined), type=SCHEMA.field(f.name).type)
    probs = artifact.predict(pa.table(cols))
    out = joined[[CAT.user_key, CAT.item_key]].copy()
    for t, column in enumerate(SPEC.prediction_columns):
        out[column] = probs[:, t]
    return out.set_index([CAT.user_key, CAT.item_key]).sort_index()


def _top_k_oracle(artifact, users: pa.Table, items: pa.Table, candidates: pa.Table,
                  k: int) -> pd.DataFrame:
    """Each user's k best candidates by the product of the task probabilities (the default
    fusion), ties to the lower item key, ranked 1..k: pandas over :func:`_oracle`."""
    scored = _oracle(artifact, users, items, candidates).reset_index()
    scored["score"] = np.prod(scored[SPEC.prediction_columns].to_numpy(), axis=1)
    scored = scored.sort_values([CAT.user_key, "score", CAT.item_key],
                                ascending=[True, False, True])
    top = scored.groupby(CAT.user_key).head(k).copy()
    top["rank"] = top.groupby(CAT.user_key).cumcount() + 1
    return top.sort_values([CAT.user_key, "rank"]).reset_index(drop=True)


def _indexed(frame) -> pd.DataFrame:
    return frame.toPandas().set_index([CAT.user_key, CAT.item_key]).sort_index()


def test_factored_candidates_equal_row_scoring(spark, job_config, tables, model):
    users, items, candidates = tables
    _, files, artifact = model
    factored = _indexed(recommend_candidates(
        spark, spark.createDataFrame(candidates), users, items, files, artifact, SPEC,
        job_config, NOW, top_k=None))
    rows = _indexed(recommend_rows(
        spark, spark.createDataFrame(candidates), spark.createDataFrame(users),
        spark.createDataFrame(items), files, artifact, SPEC, job_config, NOW, top_k=None))
    oracle = _oracle(artifact, users, items, candidates)
    assert len(factored) == len(rows) == len(oracle) == candidates.num_rows
    assert factored.index.equals(oracle.index)
    cols = SPEC.prediction_columns
    np.testing.assert_allclose(factored[cols].to_numpy(), oracle[cols].to_numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(rows[cols].to_numpy(), oracle[cols].to_numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(factored["score"], rows["score"], atol=1e-6, rtol=0)
    assert (factored["rank"] == rows["rank"]).all()
    # the user and the item without a features row were scored with null features
    assert 999_999 in factored.index.get_level_values(0)
    assert 888_888 in factored.index.get_level_values(1)


def test_factored_grid_equals_row_scoring_top_k(spark, job_config, tables, model):
    users, items, _ = tables
    _, files, artifact = model
    job_config.scoring.batch_size = 1024  # several user chunks per batch
    got = recommend_grid(spark, spark.createDataFrame(users), items, files, artifact, SPEC,
                         job_config, NOW, top_k=5).toPandas()
    grid = pd.MultiIndex.from_product([users.column(CAT.user_key).to_pylist(),
                                       items.column(CAT.item_key).to_pylist()])
    want = _top_k_oracle(artifact, users, items, pa.table({
        CAT.user_key: pa.array(grid.get_level_values(0), pa.int64()),
        CAT.item_key: pa.array(grid.get_level_values(1), pa.int64())}), 5)
    key = [CAT.user_key, "rank"]
    got = got.sort_values(key).reset_index(drop=True)
    assert len(got) == users.num_rows * 5
    assert got[key + [CAT.item_key]].values.tolist() == want[key + [CAT.item_key]].values.tolist()
    np.testing.assert_allclose(got[SPEC.prediction_columns + ["score"]].to_numpy(),
                               want[SPEC.prediction_columns + ["score"]].to_numpy(), atol=1e-6,
                               rtol=0)


def test_a_second_items_table_in_one_session_is_not_the_first(spark, job_config, tables, model):
    """The workers cache a grid job's item side: a second job with the same model and another
    items table (other keys, other features) must score the second table."""
    users, items, _ = tables
    _, files, artifact = model
    few_users = users.slice(0, 6)
    first = recommend_grid(spark, spark.createDataFrame(few_users), items, files, artifact, SPEC,
                           job_config, NOW, top_k=None).toPandas()
    other = items.slice(3, 8).set_column(0, CAT.item_key, pa.array(np.arange(8, dtype=np.int64) + 5000))
    second = recommend_grid(spark, spark.createDataFrame(few_users), other, files, artifact, SPEC,
                            job_config, NOW, top_k=None).toPandas()
    assert set(first[CAT.item_key]) == set(items.column(CAT.item_key).to_pylist())
    assert set(second[CAT.item_key]) == set(range(5000, 5008))
    oracle = _oracle(artifact, few_users, other, pa.table({
        CAT.user_key: second[CAT.user_key].to_numpy(), CAT.item_key: second[CAT.item_key].to_numpy()}))
    np.testing.assert_allclose(second.set_index([CAT.user_key, CAT.item_key]).sort_index()[
        SPEC.prediction_columns].to_numpy(), oracle.to_numpy(), atol=1e-6, rtol=0)


def test_users_straddling_arrow_batches_get_one_top_k(spark, job_config, tables, model):
    """Arrow batches of 5 rows (each user has ~12 candidates, so most users span batches):
    still one top-3 per user, equal to row scoring's window rank."""
    users, items, candidates = tables
    _, files, artifact = model
    with session_conf(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch": "5"}):
        got = recommend_candidates(spark, spark.createDataFrame(candidates), users, items, files,
                                   artifact, SPEC, job_config, NOW, top_k=3).toPandas()
    want = _top_k_oracle(artifact, users, items, candidates, 3)
    per_user = candidates.to_pandas().groupby(CAT.user_key).size()
    assert (per_user > 5).sum() > 30                      # the batches really split users
    counts = got.groupby(CAT.user_key).size()
    assert counts.to_dict() == {u: min(3, n) for u, n in per_user.items()}   # a plain count
    key = [CAT.user_key, "rank"]
    got = got.sort_values(key).reset_index(drop=True)
    assert got[key + [CAT.item_key]].values.tolist() == want[key + [CAT.item_key]].values.tolist()
    np.testing.assert_allclose(got["score"], want["score"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["factored", "rows"])
def test_ties_are_broken_by_the_lower_item_key(spark, job_config, tables, model, method):
    users, items, candidates = tables
    _, files, artifact = model
    job_config.scoring.catalog.fusion_weights = {t: 0.0 for t in SPEC.task_names}  # all score 1
    if method == "factored":
        frame = recommend_candidates(spark, spark.createDataFrame(candidates), users, items,
                                     files, artifact, SPEC, job_config, NOW, top_k=3)
    else:
        frame = recommend_rows(spark, spark.createDataFrame(candidates),
                               spark.createDataFrame(users), spark.createDataFrame(items),
                               files, artifact, SPEC, job_config, NOW, top_k=3)
    got = frame.toPandas()
    assert (got["score"] == 1.0).all()
    expected = (candidates.to_pandas().sort_values([CAT.user_key, CAT.item_key])
                .groupby(CAT.user_key).head(3))
    expected["rank"] = expected.groupby(CAT.user_key).cumcount() + 1
    got = got.sort_values([CAT.user_key, "rank"]).reset_index(drop=True)
    assert got[[CAT.user_key, "rank", CAT.item_key]].values.tolist() == \
        expected[[CAT.user_key, "rank", CAT.item_key]].values.tolist()


def test_sum_fusion(spark, job_config, tables, model):
    users, items, candidates = tables
    _, files, artifact = model
    job_config.scoring.catalog.fusion = "sum"
    job_config.scoring.catalog.fusion_weights = {"click": 1.0, "like": 2.0, "conversion": 4.0}
    got = recommend_candidates(spark, spark.createDataFrame(candidates), users, items, files,
                               artifact, SPEC, job_config, NOW, top_k=2).toPandas()
    np.testing.assert_allclose(got["score"], got["p_click"] + 2 * got["p_like"]
                               + 4 * got["p_conversion"], rtol=1e-12)
    for _, group in got.groupby(CAT.user_key):
        assert list(group.sort_values("rank")["score"]) == sorted(group["score"], reverse=True)


def _write(directory, table):
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, directory / "part-0.parquet")


@pytest.mark.parametrize("arch", ["mmoe", "single-task"])
def test_job_scores_a_candidates_table(spark, job_config, tables, tmp_path, arch):
    users, items, candidates = tables
    torch.manual_seed(0)
    config = ModelConfig(arch=arch, num_experts=2, expert_hidden=(8,), expert_dim=4,
                         tower_hidden=(4,))
    net = build_model(config, InputLayout.from_spec(SPEC), len(SPEC.tasks)).eval()
    model_dir = tmp_path / arch
    save_artifact(model_dir, net, config, SPEC, FeatureEncoder.fit(SPEC, sample_frame(SPEC, 300)))
    wh = Warehouse(job_config.warehouse)
    _write(wh.catalog(SPEC.name, "users"), users)
    _write(wh.catalog(SPEC.name, "items"), items)
    _write(wh.partition(SPEC.name, "candidates", DS), candidates)
    job_config.scoring.catalog.top_k = 4
    result = score_catalog(spark, job_config, SPEC, DS, model_dir)
    manifest = RunManifest("score", SPEC.name, DS).apply(result.record())
    assert manifest.details["method"] == ("factored" if arch == "mmoe" else "rows")
    assert manifest.details["candidates"] == "table"
    assert manifest.input_rows == candidates.num_rows
    # written without ds partitions (the older layout): read whole, and the manifest says so
    assert manifest.details["snapshots"]["users"]["snapshot"] is None
    assert manifest.details["warnings"] == [
        f"{t} is one unpartitioned table ({wh.catalog(SPEC.name, t)}), not point-in-time "
        f"snapshots: {DS} was read with its current values" for t in ("users", "items")]
    recs = spark.read.parquet(str(result.output)).toPandas()
    per_user = candidates.to_pandas().groupby(CAT.user_key).size().clip(upper=4)
    assert len(recs) == per_user.sum() == manifest.output_rows
    oracle = _oracle(ModelArtifact.load(model_dir), users, items, candidates)
    got = recs.set_index([CAT.user_key, CAT.item_key]).sort_index()
    np.testing.assert_allclose(got[SPEC.prediction_columns].to_numpy(),
                               oracle.loc[got.index, SPEC.prediction_columns].to_numpy(),
                               atol=1e-6, rtol=0)


def _first_snapshot(wh: Warehouse, tables, day: str, candidate_days) -> None:
    """The users and items snapshot of ``day``, and the candidates of ``candidate_days``."""
    users, items, candidates = tables
    _write(wh.catalog(SPEC.name, "users") / f"ds={day}", users)
    _write(wh.catalog(SPEC.name, "items") / f"ds={day}", items)
    for d in candidate_days:
        _write(wh.partition(SPEC.name, "candidates", d), candidates)


def _scaled(table: pa.Table, column: str, factor: float) -> pa.Table:
    i = table.schema.get_field_index(column)
    values = pc.multiply(table.column(column).cast(pa.float64()), factor)
    return table.set_column(i, column, values.cast(table.schema.field(column).type))


def test_an_old_day_reads_its_own_snapshot(spark, job_config, tables, model):
    """Point in time: day D reads the latest users / items snapshot on or before D, so a
    backfill of D is the same before and after a later snapshot lands; a day before the first
    snapshot is refused naming the table and the day."""
    from jobs.core.errors import MissingInputError

    users, items, candidates = tables
    model_dir = model[0]
    wh = Warehouse(job_config.warehouse)
    first, later = "2026-11-01", "2026-11-05"
    _first_snapshot(wh, tables, first, (DS, later))
    job_config.scoring.catalog.top_k = 30  # every candidate: the whole scored frame compared

    def scored(day: str) -> tuple[pd.DataFrame, dict]:
        result = score_catalog(spark, job_config, SPEC, day, model_dir)
        frame = spark.read.parquet(str(result.output)).toPandas().drop(columns="scored_at")
        keys = [CAT.user_key, CAT.item_key]
        return frame.sort_values(keys).reset_index(drop=True), result.details

    before, details = scored(DS)
    assert details["snapshots"]["users"]["snapshot"] == first
    assert details["snapshots"]["items"]["snapshot"] == first and "warnings" not in details
    # today's snapshot: other users' and items' values
    _write(wh.catalog(SPEC.name, "users") / f"ds={later}", _scaled(users, "user_activity", 40.0))
    _write(wh.catalog(SPEC.name, "items") / f"ds={later}", _scaled(items, "item_price", 9.0))
    again, details = scored(DS)
    pd.testing.assert_frame_equal(again, before)
    assert details["snapshots"]["users"]["snapshot"] == first
    # ... which the later day does read
    today, details = scored(later)
    assert details["snapshots"]["items"]["snapshot"] == later
    moved = np.abs(today[SPEC.prediction_columns].to_numpy()
                   - before[SPEC.prediction_columns].to_numpy()).max()
    assert moved > 1e-3
    with pytest.raises(MissingInputError,
                       match=f"^synth users: no snapshot on or before 2026-10-31 in .* "
                             f"\\(the first is {first}\\)$"):
        score_catalog(spark, job_config, SPEC, "2026-10-31", model_dir)


@pytest.mark.parametrize("body, message", [
    ("scoring: {catalog: {fusion: max}}", "config.scoring.catalog.fusion: must be one of 'product', 'sum', got 'max'"),
    ("scoring: {catalog: {method: fast}}", "config.scoring.catalog.method: must be one of 'factored', 'rows', got 'fast'"),
    ("scoring: {catalog: {top_k: 0}}", "top_k and max_items_per_user must be >= 1"),
])
def test_bad_catalog_settings_are_refused(refused_config, body, message):
    refused_config(body, message)


def test_catalog_sides_come_from_the_spec():
    from jobs.core.errors import ConfigError, MissingInputError
    from jobs.score.catalog import catalog_sides

    users, items = list(CAT.user_features), list(CAT.item_features)
    assert catalog_sides(SPEC, users + ["extra"], items) == (CAT.user_features, CAT.item_features)
    with pytest.raises(MissingInputError, match="catalog users table lacks"):
        catalog_sides(SPEC, users[1:], items)
    import dataclasses

    unlisted = dataclasses.replace(SPEC, catalog=dataclasses.replace(
        CAT, user_features=(), item_features=()))
    # derived from the tables' columns when the spec does not list them
    assert catalog_sides(unlisted, users, items) == (
        tuple(f for f in SPEC.feature_names if f in users),
        tuple(f for f in SPEC.feature_names if f in items))
    with pytest.raises(ConfigError, match="in both the users and the items table"):
        catalog_sides(unlisted, users + ["item_price"], items)


def test_a_catalog_backfill_of_an_old_day_is_reproducible(spark, job_config, tables, model):
    """`mmoe backfill --catalog`: every day's recommendations from the snapshots as of that
    day; rerun after a later snapshot landed, the old day's lists are identical."""
    from jobs.backfill.stage import backfill_range

    users, items, candidates = tables
    wh = Warehouse(job_config.warehouse)
    first, later = "2026-11-01", "2026-11-03"
    _first_snapshot(wh, tables, first, (DS, later))

    def lists(day: str) -> pd.DataFrame:
        part = wh.partition(SPEC.name, "recommendations", day, model_version=version)
        frame = spark.read.parquet(str(part)).toPandas().drop(columns="scored_at")
        return frame.sort_values([CAT.user_key, "rank"]).reset_index(drop=True)

    result = backfill_range(spark, job_config, SPEC, DS, DS, model[0], catalog=True)
    assert [(d.ds, d.status, d.evaluation) for d in result.days] == [(DS, "scored", "no labels")]
    version = result.days[0].model_version
    before = lists(DS)
    _write(wh.catalog(SPEC.name, "users") / f"ds={later}", _scaled(users, "user_activity", 40.0))
    _write(wh.catalog(SPEC.name, "items") / f"ds={later}", _scaled(items, "item_price", 9.0))
    result = backfill_range(spark, job_config, SPEC, DS, later, model[0], catalog=True)
    assert [d.status for d in result.days] == ["scored", "scored"]
    pd.testing.assert_frame_equal(lists(DS), before)
    assert not lists(later)[SPEC.prediction_columns].equals(before[SPEC.prediction_columns])
    # the day before the first snapshot fails alone, in one line naming the table and the day
    result = backfill_range(spark, job_config, SPEC, "2026-10-31", DS, model[0], catalog=True)
    assert [d.status for d in result.days] == ["failed", "scored", "scored"]
    assert result.days[0].error.startswith("synth users: no snapshot on or before 2026-10-31")
