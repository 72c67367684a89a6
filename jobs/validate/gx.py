"""The Great Expectations adapter: one ephemeral GX context per validation, one checkpoint per
batch (the labels table, the features frame), Data Docs optionally rendered."""

from __future__ import annotations

from pathlib import Path

import great_expectations as gx
from great_expectations.checkpoint import UpdateDataDocsAction
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from pyspark.sql import DataFrame

RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 0}


class GxRun:
    """One ephemeral GX context for a validation: each batch (the labels table, the features
    frame) is validated by its own checkpoint; with ``docs_dir``, GX's Data Docs site builder
    renders every result there (``index.html`` + one page per batch)."""

    def __init__(self, docs_dir: Path | None) -> None:
        sites = {}
        if docs_dir is not None:
            sites["local"] = {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                  "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        self.docs_dir = docs_dir
        self.context = gx.get_context(mode="ephemeral", project_config=DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            data_docs_sites=sites, analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False)))
        self.source = self.context.data_sources.add_spark(name="warehouse", persist=False)

    def run(self, frame: DataFrame, suite, asset: str, run_name: str):
        context = self.context
        batch = self.source.add_dataframe_asset(name=asset).add_batch_definition_whole_dataframe(
            "partition")
        suite = context.suites.add(suite)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=suite.name, data=batch, suite=suite))
        actions = [UpdateDataDocsAction(name="data_docs")] if self.docs_dir is not None else []
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=f"validate-{asset}", validation_definitions=[definition], actions=actions,
            result_format=RESULT_FORMAT))
        outcome = checkpoint.run(batch_parameters={"dataframe": frame},
                                 run_id=RunIdentifier(run_name=run_name))
        if self.docs_dir is not None:
            _prune_static_images(self.docs_dir)
        return next(iter(outcome.run_results.values()))


def _prune_static_images(docs_dir: Path) -> None:
    """GX copies ~3.4 MB of marketing images into every site; the pages use only the favicon."""
    images = docs_dir / "static" / "images"
    if images.is_dir():
        for path in images.iterdir():
            if path.is_file() and path.name != "favicon.ico":
                path.unlink()



def schema_only(suite, present: set[str]) -> None:
    """Keep only the schema expectations that can run on the columns ``present``."""
    suite.expectations = [e for e in suite.expectations
                          if e.meta["level"] == "schema"
                          and (e.meta["rule"] == "missing_column" or e.column in present)]
