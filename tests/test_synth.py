"""The synthetic impression generator, checked against the spec and against facts recomputed from
its own output (no Spark)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.core.errors import InputError
from jobs.core.manifest import RunManifest
from jobs.core.warehouse import Warehouse
from jobs.data.synth import catalog_path, generate_synth, synth_day
from schemas.spec import CategoricalFeature, DenseFeature, load_spec
from schemas.tables import features_arrow_schema, labels_arrow_schema

SPEC = load_spec("synth")
DS = "2026-11-01"


@pytest.fixture(scope="module")
def day():
    """50k rows of one day, seed 3, rho 0.5: features and labels as pandas, plus the latent."""
    feats, labels, latent = synth_day(SPEC, 3, DS, 50_000, 0.5, return_latent=True)
    return feats, labels, latent


def test_same_seed_same_rows_other_seed_differs():
    a_f, a_l = synth_day(SPEC, 11, DS, 3_000, 0.5)
    b_f, b_l = synth_day(SPEC, 11, DS, 3_000, 0.5)
    assert a_f.equals(b_f) and a_l.equals(b_l)
    c_f, c_l = synth_day(SPEC, 12, DS, 3_000, 0.5)
    assert not a_f.equals(c_f)
    assert not np.array_equal(a_f.column("x0").to_numpy(), c_f.column("x0").to_numpy())
    other_day, _ = synth_day(SPEC, 11, "2026-11-02", 3_000, 0.5)
    assert not np.array_equal(a_f.column("x0").to_numpy(), other_day.column("x0").to_numpy())


def test_schema_equals_spec(day):
    feats, labels, _ = day
    assert feats.schema == features_arrow_schema(SPEC)
    assert labels.schema == labels_arrow_schema(SPEC)
    assert feats.column_names == SPEC.features_table_columns


def test_values_within_spec_ranges_and_vocabularies(day):
    feats, labels, _ = day
    df = feats.to_pandas()
    for key in SPEC.key_names:
        assert df[key].notna().all() and df[key].is_unique
    for f in SPEC.features:
        col = df[f.name]
        if isinstance(f, DenseFeature):
            present = col.dropna()
            if f.min is not None:
                assert present.min() >= f.min, f.name
            if f.max is not None:
                assert present.max() <= f.max, f.name
            assert col.isna().mean() <= f.max_null_fraction, f.name
        else:
            assert isinstance(f, CategoricalFeature)
            assert col.isna().mean() <= f.max_null_fraction, f.name
            if f.vocabulary is not None:
                seen = set(col.dropna().astype(str))
                assert seen <= set(f.vocabulary), (f.name, seen - set(f.vocabulary))
                assert len(seen) > 1, f.name
    assert 0 < df["item_price"].isna().mean() <= 0.05
    assert 0 < df["user_age"].isna().mean() <= 0.2
    latent = [f.name for f in SPEC.dense_features if f.name.startswith("x")]
    x = df[latent].to_numpy()
    assert abs(x.mean()) < 0.02 and abs(x.std() - 1.0) < 0.02
    # Zipf skew: the busiest 1% of users and items see far more than 1% of the impressions
    for col in ("user_id", "item_id"):
        counts = df[col].value_counts()
        top = counts.iloc[: max(1, len(counts) // 100)].sum() / len(df)
        assert top > 0.05, col


def test_label_rates_and_conversion_implies_click(day):
    _, labels, _ = day
    lab = labels.to_pandas()
    assert set(lab.columns) == set(SPEC.labels_table_columns)
    for task in SPEC.task_names:
        assert set(lab[task].unique()) <= {0, 1}
    assert 0.05 <= lab["click"].mean() <= 0.15
    assert 0.01 <= lab["like"].mean() <= 0.05
    clicked = lab["click"] == 1
    assert 0.10 <= lab.loc[clicked, "conversion"].mean() <= 0.30
    assert (lab.loc[~clicked, "conversion"] == 0).all()
    assert lab["conversion"].sum() > 0


@pytest.mark.parametrize("rho", [0.2, 0.9])
def test_latent_correlation_tracks_rho(rho):
    feats, _, latent = synth_day(SPEC, 5, DS, 20_000, rho, return_latent=True)
    corr = np.corrcoef(latent.T)
    for i in range(3):
        for j in range(i + 1, 3):
            assert abs(corr[i, j] - rho) < 0.05, (i, j, corr[i, j])
    # the latent parts are linear in the written x columns: recover w_t and check its cosines
    names = [f.name for f in SPEC.dense_features if f.name.startswith("x")]
    x = np.column_stack([feats.column(n).to_numpy() for n in names])
    w, *_ = np.linalg.lstsq(x, latent, rcond=None)
    assert np.abs(x @ w - latent).max() < 1e-8
    unit = w / np.linalg.norm(w, axis=0)
    cos = unit.T @ unit
    assert np.allclose(cos[np.triu_indices(3, 1)], rho, atol=1e-6)


def test_label_correlation_grows_with_rho():
    """The task relatedness reaches the labels: click and like agree more at rho = 1."""
    def click_like(rho: float) -> float:
        _, labels = synth_day(SPEC, 7, DS, 60_000, rho)
        lab = labels.to_pandas()
        return float(np.corrcoef(lab["click"], lab["like"])[0, 1])
    assert click_like(1.0) > click_like(0.0) + 0.02


def test_generate_writes_days_catalog_and_manifest(job_config):
    cfg = job_config
    wh = Warehouse(cfg.warehouse)
    result = generate_synth(cfg, DS, 2, 4_000, seed=9, task_correlation=0.5)
    m = RunManifest("data-synth", "synth", DS).apply(result.record())
    days = [DS, "2026-11-02"]
    assert result["rows"] == 8_000 and m.output_rows == 8_000
    assert sorted(m.details["days"]) == days
    for ds in days:
        assert set(m.details["days"][ds]["label_rates"]) == set(SPEC.task_names)
        feats = pq.read_table(wh.partition("synth", "features", ds))
        labels = pq.read_table(wh.partition("synth", "labels", ds))
        assert feats.num_rows == labels.num_rows == 4_000
        files = list(wh.partition("synth", "features", ds).glob("*.parquet"))
        assert pq.read_schema(files[0]).remove_metadata() == features_arrow_schema(SPEC)
        assert labels.column("click").to_pylist() == \
            synth_day(SPEC, 9, ds, 4_000, 0.5)[1].column("click").to_pylist()
        assert m.details["days"][ds]["positives"]["click"] == sum(labels.column("click").to_pylist())
    ids = np.concatenate([pq.read_table(wh.partition("synth", "features", ds),
                                        columns=["impression_id"]).column(0).to_numpy()
                          for ds in days])
    assert len(np.unique(ids)) == len(ids)

    # a day does not depend on the other days of the run: regenerate day 2 alone
    day2 = pq.read_table(wh.partition("synth", "features", days[1]))
    generate_synth(cfg, days[1], 1, 4_000, seed=9, task_correlation=0.5)
    again = pq.read_table(wh.partition("synth", "features", days[1]))
    assert again.equals(day2)  # and the rerun replaced the partition instead of adding to it
    assert len(list(wh.partition("synth", "features", days[1]).iterdir())) == len(files)

    # each day's catalog snapshot agrees with that day's impressions' item and user fields
    snapshots = {}
    for ds in days:
        items = pq.read_table(catalog_path(cfg, "items", ds)).to_pandas().set_index("item_id")
        users = pq.read_table(catalog_path(cfg, "users", ds)).to_pandas().set_index("user_id")
        assert items.index.is_unique and users.index.is_unique
        assert m.outputs[f"catalog/items/ds={ds}"] == \
            str(cfg.warehouse / "synth" / "catalog" / "items" / f"ds={ds}")
        df = pq.read_table(wh.partition("synth", "features", ds)).to_pandas()
        joined = df.join(items, on="item_id", rsuffix="_cat").join(users, on="user_id",
                                                                   rsuffix="_cat")
        for col in ("item_category", "item_popularity", "platform", "user_cohort",
                    "user_activity"):
            assert (joined[col] == joined[f"{col}_cat"]).all(), (ds, col)
        priced = joined["item_price"].notna()
        assert (joined.loc[priced, "item_price"] == joined.loc[priced, "item_price_cat"]).all()
        snapshots[ds] = items, users
    # slowly changing: popularity and activity move a little from one day to the next (at
    # most the factor exp(2 * 0.1) apart), the other attributes stay
    (items1, users1), (items2, users2) = snapshots[days[0]], snapshots[days[1]]
    for before, after, col in ((items1, items2, "item_popularity"),
                               (users1, users2, "user_activity")):
        moved = before[col] != after[col]
        assert 0.05 < moved.mean() < 1.0, col
        ratio = (after[col] + 1) / (before[col] + 1)
        assert ratio.between(np.exp(-0.2), np.exp(0.2)).all(), col
    assert (items1["item_category"] == items2["item_category"]).all()
    assert (users1["platform"] == users2["platform"]).all()
    for table in ("items", "users"):
        schema = pq.read_schema(next(catalog_path(cfg, table, DS).glob("*.parquet")))
        for field in schema:
            assert field.type == features_arrow_schema(SPEC).field(field.name).type


def test_bad_arguments_are_refused(job_config):
    with pytest.raises(InputError, match="task-correlation"):
        generate_synth(job_config, DS, 1, 100, task_correlation=1.5)
    with pytest.raises(InputError, match="YYYY-MM-DD"):
        generate_synth(job_config, "2026/11/01", 1, 100)
    with pytest.raises(InputError, match="rows-per-day"):
        generate_synth(job_config, DS, 1, 0)
    assert not (job_config.warehouse / "synth").exists()
