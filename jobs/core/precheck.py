"""What a command checks before its Spark session (and the JVM) starts: torch- and Spark-free,
so a typo costs a second, not the JVM's start-up. Each check raises the same typed error the
stage would raise later, with the same one line."""

from __future__ import annotations

from jobs.core.config import JobConfig
from jobs.core.errors import InputError, MissingInputError
from jobs.core.modelref import ModelRef
from jobs.core.registry import Registry, RegistryError, version_of
from jobs.core.warehouse import Warehouse, parquet_files


def features_present(cfg: JobConfig, dataset: str, ds: str, job: str) -> None:
    """The ds has a features partition with data (else: there is no data to ``job``). A
    features table mapped to the catalog (``tables:``) needs the session: its stage checks it."""
    if "features" in cfg.tables.get(dataset, {}):
        return
    features_dir = Warehouse(cfg.warehouse).partition(dataset, "features", ds)
    if not parquet_files(features_dir):
        raise MissingInputError(f"no data for {dataset} on {ds}: the features partition "
                                f"{features_dir} is missing or empty, so there is nothing to "
                                f"{job} (write it first, e.g. mmoe data synth or mmoe data census)")


def model_known(cfg: JobConfig, dataset: str, ds: str, ref: ModelRef) -> str:
    """The model a reference names on ``ds`` exists: a directory holds an artifact manifest, a
    version is registered, an alias has a promotion in force. Returns its version."""
    if ref.kind == "version":
        try:
            Registry.read(Warehouse(cfg.warehouse), dataset).model(ref.value)
        except RegistryError as exc:
            raise RegistryError(f"{ref.option} {ref}: {exc}") from None
        return ref.value
    return version_of(cfg, dataset, ds, ref)


def different_models(cfg: JobConfig, dataset: str, ds: str, baseline: ModelRef,
                     candidate: ModelRef) -> None:
    """compare's two arms are not the same model version."""
    versions = [version_of(cfg, dataset, ds, ref) for ref in (baseline, candidate)]
    if versions[0] == versions[1]:
        raise InputError(f"--baseline {baseline} and --candidate {candidate} are the same version "
                         f"{versions[0]}: nothing to compare")
