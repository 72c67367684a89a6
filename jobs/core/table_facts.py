"""What a logical table holds for one day, read through the same table layer as the jobs
(``jobs.core.tables``): a path table or a Spark catalog table behind one call.

The nightly DAG's decisions (is the day's features partition there, which model versions
scored the matured day) come from here: for a path table in the Airflow task itself, for a
catalog table through ``mmoe tables`` (a Spark driver of its own, run like every other job,
so an embedded metastore is opened by one JVM at a time and a Connect server answers for its
own catalog)."""

from __future__ import annotations

from dataclasses import dataclass, field

from jobs.core.config import JobConfig
from jobs.core.manifest import RunRecord
from jobs.core.tables import EXTRA_PARTITIONS, NO_DS, Table, table


@dataclass
class TableFacts:
    """``ds`` given: whether that partition holds data and its sub-partitions (model versions
    for predictions and recommendations); ``ds`` None: the table's ``ds`` partitions."""

    dataset: str
    table: str
    location: str
    catalog: bool
    ds: str | None = None
    exists: bool = False
    partitions: list[str] = field(default_factory=list)
    sub_partitions: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"table": self.table, "location": self.location, "catalog": self.catalog,
                "ds": self.ds, "exists": self.exists, "partitions": self.partitions,
                "sub_partitions": self.sub_partitions}

    def record(self) -> RunRecord:
        return RunRecord(output_rows=len(self.partitions) if self.ds is None else int(self.exists),
                         details=self.as_dict())


def is_catalog(cfg: JobConfig, dataset: str, name: str) -> bool:
    """Whether the config's ``tables:`` section maps ``name`` to a catalog table."""
    return cfg.tables.get(dataset, {}).get(name) is not None


def describe(source: Table, ds: str | None, catalog: bool) -> TableFacts:
    facts = TableFacts(source.dataset, source.table, source.where(ds), catalog, ds)
    if ds is None or source.table in NO_DS:
        facts.partitions = [] if source.table in NO_DS else source.partitions()
        facts.exists = source.exists()
        return facts
    facts.exists = source.exists(ds)
    facts.sub_partitions = {key: source.sub_partitions(ds, key)
                            for key in EXTRA_PARTITIONS.get(source.table, ())}
    return facts


def table_facts(cfg: JobConfig, dataset: str, name: str, ds: str | None = None,
                spark=None) -> TableFacts:
    """The facts of ``dataset``'s logical table ``name`` (a catalog table needs ``spark``)."""
    return describe(table(cfg, dataset, name, spark), ds, is_catalog(cfg, dataset, name))
