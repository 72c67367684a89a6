"""The model registry: versions, aliases and their history, kept in the warehouse (no server).

Layout (paths from :class:`jobs.core.warehouse.Warehouse`), one registry per dataset::

    <wh>/<dataset>/models/history.jsonl          append-only: one JSON object per event
    <wh>/<dataset>/models/artifacts/<sha256>/    the artifact's files, content-addressed

Events: ``register`` (version, sha256, arch, source directory) and ``promote`` (version, alias,
effective date). Every event records who (``getpass.getuser()``), when (UTC) and why
(``--reason``). Nothing is ever rewritten: the registry's state is a fold over the history.
Register and promote hold the registry's lock (``_locks/models.lock``) while they check and
append, so two registrations cannot both decide a version is new.

Which model is in force: for alias A on ds D, the promotion of A with the latest effective
date <= D (ties: the later promotion). ``champion`` is the production model; every alias whose
name starts with ``challenger`` (``challenger``, ``challenger-b``, ...) is a challenger that the
nightly pipeline also scores.

Every read of a stored artifact re-hashes it: the directory name must be the SHA-256 of its
MANIFEST.json, and every file must match the checksum MANIFEST.json lists for it. A tampered
copy is refused with a one-line :class:`~jobs.core.errors.RegistryError`. This module imports neither
torch nor Spark (the Airflow DAG lists the models in force with it); registration, which must
load the model to check its spec, imports the model library lazily.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.core.config import JobConfig
from jobs.core.errors import InputError, MissingInputError, RegistryError
from jobs.core.manifest import RunRecord, utc_now
from jobs.core.modelref import ModelRef
from jobs.core.warehouse import (
    Warehouse,
    append_json_line,
    parse_date,
    read_files,
    read_bytes,
    read_json_lines,
    safe_name,
    sha256_hex,
    write_files_once,
)
from schemas import load_spec

MANIFEST = "MANIFEST.json"  # mmoe_model.artifact.MANIFEST (not imported: that module needs torch)
CHAMPION = "champion"
CHALLENGER_PREFIX = "challenger"


def is_challenger(alias: str) -> bool:
    return alias.startswith(CHALLENGER_PREFIX)


# --------------------------------------------------------------------------------------------
# State: a fold over the history


@dataclass(frozen=True)
class RegisteredModel:
    dataset: str
    version: str
    sha256: str
    arch: str
    registered_at: str
    registered_by: str
    reason: str | None
    source: str


@dataclass(frozen=True)
class Promotion:
    alias: str
    version: str
    effective: str
    promoted_at: str
    promoted_by: str
    reason: str | None
    sequence: int  # position in the history: the tie-break between equal effective dates


@dataclass
class Registry:
    """One dataset's registry as read from its history."""

    wh: Warehouse
    dataset: str
    models: dict[str, RegisteredModel] = field(default_factory=dict)
    promotions: list[Promotion] = field(default_factory=list)

    @classmethod
    def read(cls, wh: Warehouse, dataset: str) -> "Registry":
        registry = cls(wh, safe_name(dataset, "dataset"))
        try:
            events = read_json_lines(wh.registry_history(dataset))
        except ValueError as exc:
            raise RegistryError(f"the model registry of {dataset} is unreadable: {exc}") from None
        for sequence, event in enumerate(events):
            if event.get("event") == "register":
                registry.models[event["version"]] = RegisteredModel(
                    dataset, event["version"], event["sha256"], event.get("arch", "?"),
                    event["at"], event["by"], event.get("reason"), event.get("source", ""))
            elif event.get("event") == "promote":
                registry.promotions.append(Promotion(
                    event["alias"], event["version"], event["effective"], event["at"],
                    event["by"], event.get("reason"), sequence))
        return registry

    def model(self, version: str) -> RegisteredModel:
        found = self.models.get(version)
        if found is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise RegistryError(f"unknown model version {version!r} for dataset {self.dataset} "
                                f"(registered: {known})")
        return found

    def in_force(self, alias: str, ds: str) -> Promotion:
        """The promotion of ``alias`` in force on ``ds`` (see the module docstring)."""
        day = parse_date(ds, "ds").isoformat()
        mine = [p for p in self.promotions if p.alias == alias]
        if not mine:
            known = ", ".join(sorted({p.alias for p in self.promotions})) or "none"
            raise RegistryError(f"unknown alias @{alias} for dataset {self.dataset} "
                                f"(aliases: {known})")
        eligible = [p for p in mine if p.effective <= day]
        if not eligible:
            first = min(p.effective for p in mine)
            raise RegistryError(f"@{alias} of {self.dataset} has no promotion in force on {day} "
                                f"(its earliest effective date is {first})")
        return max(eligible, key=lambda p: (p.effective, p.sequence))

    def aliases_in_force(self, ds: str) -> dict[str, Promotion]:
        day = parse_date(ds, "ds").isoformat()
        return {alias: self.in_force(alias, day)
                for alias in sorted({p.alias for p in self.promotions})
                if any(p.alias == alias and p.effective <= day for p in self.promotions)}

    def artifact_files(self, version: str) -> dict[str, bytes]:
        """The stored artifact of ``version``, verified against its content address and its
        own MANIFEST.json checksums."""
        model = self.model(version)
        directory = self.wh.registry_artifact(self.dataset, model.sha256)
        files = read_files(directory)
        if MANIFEST not in files:
            raise RegistryError(f"the stored artifact of {version} is missing ({directory})")
        problem = artifact_problem(files, model.sha256)
        if problem:
            raise RegistryError(f"the stored artifact of {version} was tampered with: {problem} "
                                f"({directory})")
        return files


def artifact_problem(files: dict[str, bytes], sha256: str | None = None) -> str | None:
    """Why a set of artifact files does not match its MANIFEST.json (or the expected checksum
    of that manifest), or None. Torch-free; ``ModelArtifact.from_files`` checks the same and
    more when the model is loaded."""
    if sha256 is not None and sha256_hex(files[MANIFEST]) != sha256:
        return (f"{MANIFEST} hashes to {sha256_hex(files[MANIFEST])[:12]}…, "
                f"not its registered checksum {sha256[:12]}…")
    try:
        listed = json.loads(files[MANIFEST])["files"]
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST} has no file list"
    for name, expected in sorted(listed.items()):
        if name not in files:
            return f"file {name} is missing"
        if sha256_hex(files[name]) != expected:
            return f"file {name} does not match its SHA-256 in {MANIFEST}"
    return None


# --------------------------------------------------------------------------------------------
# Resolving --model (a directory, a registered version, or @alias) for one ds


@dataclass(frozen=True)
class ModelChoice:
    """The artifact a ``--model`` value names on one ds: its files and where they came from."""

    files: dict[str, bytes] = field(repr=False)
    sha256: str
    version: str | None          # None for a directory (known once the artifact is loaded)
    source: str                  # "directory X", "registry", "@champion (effective D)"

    def details(self) -> dict[str, str]:
        return {"model_source": self.source}


def resolve_model(cfg: JobConfig, dataset: str, ds: str,
                  model: "ModelRef | Path | str") -> ModelChoice:
    """The artifact ``model`` names on ``ds``: a directory, ``@alias`` (the promotion in force
    on ``ds``), or a registered version."""
    ref = ModelRef.parse(model)
    if ref.kind == "directory":
        return directory_choice(ref.path)
    registry = Registry.read(Warehouse(cfg.warehouse), dataset)
    if ref.kind == "alias":
        promotion = _in_force(registry, ref, ds)
        files = registry.artifact_files(promotion.version)
        return ModelChoice(files, registry.model(promotion.version).sha256, promotion.version,
                           f"@{promotion.alias} (effective {promotion.effective})")
    if ref.value not in registry.models:
        raise RegistryError(f"{ref.option} {ref} is neither an artifact directory nor a registered "
                            f"version of {dataset} (registered: "
                            f"{', '.join(sorted(registry.models)) or 'none'})")
    return ModelChoice(registry.artifact_files(ref.value), registry.model(ref.value).sha256,
                       ref.value, "registry")


def version_of(cfg: JobConfig, dataset: str, ds: str, model: "ModelRef | Path | str") -> str:
    """The model_version a reference names on ``ds``, without loading the model: a version is
    itself (its predictions may come from an unregistered directory), an alias the version in
    force, a directory the version its MANIFEST.json records."""
    ref = ModelRef.parse(model)
    if ref.kind == "version":
        return ref.value
    if ref.kind == "alias":
        return _in_force(Registry.read(Warehouse(cfg.warehouse), dataset), ref, ds).version
    files = read_files(ref.path)
    try:
        return safe_name(json.loads(files[MANIFEST])["model_version"], "model_version")
    except (KeyError, ValueError, TypeError):
        raise RegistryError(f"{ref} has no readable {MANIFEST}: not a model artifact") from None


def _in_force(registry: "Registry", ref: ModelRef, ds: str):
    """The promotion an alias reference names on ``ds``; a refusal names the option."""
    try:
        return registry.in_force(ref.value, ds)
    except RegistryError as exc:
        raise RegistryError(f"{ref.option} {ref}: {exc}") from None


def directory_choice(directory: Path) -> ModelChoice:
    # deferred: mmoe_model.artifact imports torch; the registry stays torch-free (the Airflow
    # DAG and `mmoe --help` import it)
    from mmoe_model.artifact import read_artifact_files

    files = read_artifact_files(directory)
    return ModelChoice(files, sha256_hex(files[MANIFEST]), None, f"directory {directory}")


# --------------------------------------------------------------------------------------------
# Writes: register and promote (append to the history under the registry lock)


@dataclass
class RegistryResult:
    action: str                  # register | promote
    dataset: str
    version: str
    sha256: str
    events: list[dict[str, Any]]  # what was appended (empty: already registered, no alias)
    artifact: Path
    note: str | None = None       # a no-op says so: "... already registered ...: nothing to do"

    def record(self) -> RunRecord:
        details: dict[str, Any] = {"action": self.action, "events": self.events}
        if self.note:
            details["note"] = self.note
        return RunRecord(model_version=self.version, model_sha256=self.sha256,
                         outputs={"artifact": str(self.artifact)}, details=details)


def _event(kind: str, reason: str | None, **fields: Any) -> dict[str, Any]:
    return {"event": kind, "at": utc_now(), "by": getpass.getuser(), "reason": reason, **fields}


def artifact_dataset(directory: Path) -> str:
    """The dataset an artifact directory was trained on (its spec.json's name), torch-free."""
    try:
        return str(json.loads((Path(directory) / "spec.json").read_text())["name"])
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{directory} is not a model artifact directory (no readable spec.json)") \
            from None


def register_model(cfg: JobConfig, directory: Path, alias: str | None = None,
                   effective: str | None = None, reason: str | None = None) -> RegistryResult:
    """Copy an artifact into its dataset's registry (content-addressed) and record it; with
    ``alias``, promote it too. Refuses an artifact that fails verification or whose spec differs
    from the dataset's current spec (``SpecMismatch``)."""
    # deferred: torch (see directory_choice)
    from mmoe_model.artifact import read_artifact_files

    return register_files(cfg, read_artifact_files(directory), str(Path(directory).resolve()),
                          alias, effective, reason)


IMPORT_FORMATS = ("onnx",)


def import_model(cfg: JobConfig, path: Path, fmt: str, dataset: str, alias: str | None = None,
                 effective: str | None = None, reason: str | None = None) -> RegistryResult:
    """``mmoe models import``: check an ONNX graph against ``dataset``'s spec, wrap it in the
    artifact format (checksums, spec, who / when / source / why in metrics.json) and register
    it (and promote it to ``alias``). Importing the same graph again for the same spec finds
    the same version and records no second registration."""
    # deferred: torch and onnx (see directory_choice)
    from mmoe_model.artifact import build_imported_files

    if fmt not in IMPORT_FORMATS:
        raise InputError(f"--format must be one of {', '.join(IMPORT_FORMATS)}; got {fmt!r}")
    if alias is not None:
        safe_name(alias, "--alias")
    if effective is not None:
        parse_date(effective, "--effective")
    spec = load_spec(safe_name(dataset, "--dataset"))
    data = read_bytes(Path(path), "models import FILE")
    source = str(Path(path).resolve())
    files = build_imported_files(data, spec, {
        "by": getpass.getuser(), "at": utc_now(), "source": source,
        "source_sha256": sha256_hex(data), "reason": reason, "format": fmt})
    return register_files(cfg, files, source, alias, effective, reason, reuse_version=True)


def register_files(cfg: JobConfig, files: dict[str, bytes], source: str, alias: str | None = None,
                   effective: str | None = None, reason: str | None = None,
                   reuse_version: bool = False) -> RegistryResult:
    """Register artifact ``files`` (see :func:`register_model`). ``reuse_version``: a version
    already registered with other metadata (an imported graph imported again: same graph and
    spec, another who / when) is the registered one, not a conflict."""
    # deferred: torch (see directory_choice)
    from mmoe_model.artifact import ModelArtifact

    artifact = ModelArtifact.from_files(files)         # verifies every checksum and the version
    dataset = artifact.spec.name
    artifact.check_spec(load_spec(dataset))            # the data it will score must fit it
    wh = Warehouse(cfg.warehouse)
    if alias is not None:
        safe_name(alias, "--alias")
    with wh.lock(dataset, "models", wait_seconds=cfg.locks.wait_seconds,
                 poll_seconds=cfg.locks.poll_seconds):
        registry = Registry.read(wh, dataset)
        known = registry.models.get(artifact.model_version)
        # The version fingerprints what the model computes (config, spec, normalisation,
        # weights): the same version is the same model, even when its metadata (metrics.json:
        # training metrics, an import's who / when) differs; the registered copy is kept and
        # nothing is recorded (so ``reuse_version`` is now what every registration does).
        sha256 = known.sha256 if known is not None else artifact.sha256
        target = wh.registry_artifact(dataset, sha256)
        if known is None:
            write_files_once(target, files)
        problem = artifact_problem(read_files(target), sha256)
        if problem:  # the copy must read back exactly before the history points at it
            raise RegistryError(f"copying {source} into the registry failed: {problem}"
                                if known is None else
                                f"the stored artifact of {known.version} was tampered with: "
                                f"{problem} ({target})")
        events = []
        if known is None:
            events.append(_event("register", reason, version=artifact.model_version,
                                 sha256=sha256, arch=artifact.arch, source=source))
        if alias is not None:
            promotion = _promotion_event(alias, artifact.model_version, effective, reason)
            if not _already_in_force(registry, promotion):
                events.append(promotion)
        for event in events:
            append_json_line(wh.registry_history(dataset), event)
    note = None
    if not events:
        note = (f"{artifact.model_version} is already registered for {dataset}"
                + (f" and @{alias} already points at it from that date" if alias else "")
                + ": nothing to do")
    return RegistryResult("register", dataset, artifact.model_version, sha256, events, target,
                          note)


def _already_in_force(registry: Registry, promotion: dict[str, Any]) -> bool:
    """The alias's latest promotion for that effective date already names that version: a
    repeated ``register --alias`` (a DAG's second pass) records nothing."""
    same_day = [p for p in registry.promotions
                if p.alias == promotion["alias"] and p.effective == promotion["effective"]]
    return bool(same_day) and max(same_day, key=lambda p: p.sequence).version == \
        promotion["version"]


def _promotion_event(alias: str, version: str, effective: str | None,
                     reason: str | None) -> dict[str, Any]:
    day = (parse_date(effective, "--effective").isoformat() if effective is not None
           else dt.datetime.now(dt.timezone.utc).date().isoformat())
    return _event("promote", reason, alias=safe_name(alias, "--alias"), version=version,
                  effective=day)


def find_dataset(cfg: JobConfig, version: str) -> str:
    """The dataset whose registry holds ``version`` (for ``promote`` without ``--dataset``)."""
    wh = Warehouse(cfg.warehouse)
    holders = [d for d in wh.registry_datasets() if version in Registry.read(wh, d).models]
    if not holders:
        raise RegistryError(f"unknown model version {version!r}: no registry under "
                            f"{cfg.warehouse} holds it")
    if len(holders) > 1:
        raise RegistryError(f"model version {version!r} is registered for {', '.join(holders)}; "
                            f"name one with --dataset")
    return holders[0]


def promote_model(cfg: JobConfig, version: str, alias: str, effective: str | None = None,
                  reason: str | None = None, dataset: str | None = None) -> RegistryResult:
    """Point ``alias`` at ``version`` from ``effective`` (default: today, UTC) on."""
    safe_name(version, "version")
    safe_name(alias, "--alias")
    if effective is not None:
        parse_date(effective, "--effective")
    dataset = dataset or find_dataset(cfg, version)
    wh = Warehouse(cfg.warehouse)
    with wh.lock(dataset, "models", wait_seconds=cfg.locks.wait_seconds,
                 poll_seconds=cfg.locks.poll_seconds):
        registry = Registry.read(wh, dataset)
        model = registry.model(version)
        registry.artifact_files(version)  # never promote a copy that no longer verifies
        event = _promotion_event(alias, version, effective, reason)
        append_json_line(wh.registry_history(dataset), event)
    return RegistryResult("promote", dataset, version, model.sha256, [event],
                          wh.registry_artifact(dataset, model.sha256))


# --------------------------------------------------------------------------------------------
# Reading for people and for the DAG


def list_models(cfg: JobConfig, dataset: str | None = None) -> list[dict[str, Any]]:
    """One row per registered version: version, checksum, spec, registered, aliases (every
    promotion of it, with its effective date)."""
    wh = Warehouse(cfg.warehouse)
    rows = []
    for name in ([safe_name(dataset, "--dataset")] if dataset else wh.registry_datasets()):
        registry = Registry.read(wh, name)
        for model in sorted(registry.models.values(), key=lambda m: m.registered_at):
            promotions = [p for p in registry.promotions if p.version == model.version]
            rows.append({
                "dataset": name, "version": model.version, "checksum": model.sha256,
                "spec": name, "arch": model.arch,
                "registered": f"{model.registered_at} by {model.registered_by}",
                "aliases": ", ".join(f"@{p.alias} from {p.effective}" for p in promotions),
            })
    return rows


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def models_in_force(cfg: JobConfig, dataset: str, ds: str) -> list[dict[str, str]]:
    """The champion and every challenger in force on ``ds``: ``[{"alias", "version"}]``, the
    champion first, each version once (a challenger equal to the champion is not scored twice)."""
    registry = Registry.read(Warehouse(cfg.warehouse), dataset)
    aliases = registry.aliases_in_force(ds)
    ordered = ([CHAMPION] if CHAMPION in aliases else []) + sorted(
        a for a in aliases if is_challenger(a))
    seen: set[str] = set()
    chosen = []
    for alias in ordered:
        version = aliases[alias].version
        if version not in seen:
            seen.add(version)
            chosen.append({"alias": alias, "version": version})
    return chosen


def describe_model(cfg: JobConfig, dataset: str, ds: str, model: "ModelRef | str") -> dict[str, Any]:
    """What a model reference is, for a report: its version, where it comes from, whether it is
    registered (and every alias it was promoted to), and from its artifact's metadata (when the
    artifact can be found) the architecture, epochs, training range, seed and validation AUC.
    Torch-free; reads the artifact's small JSON files only."""
    ref = ModelRef.parse(model)
    version = version_of(cfg, dataset, ds, ref)
    try:
        registry = Registry.read(Warehouse(cfg.warehouse), dataset)
    except RegistryError:  # an unreadable registry must not stop a report of plain versions
        registry = Registry(Warehouse(cfg.warehouse), dataset)
    registered = registry.models.get(version)
    out: dict[str, Any] = {"version": version, "reference": str(ref),
                           "registered": registered.registered_at if registered else None,
                           "aliases": [f"@{p.alias} from {p.effective}" for p in registry.promotions
                                       if p.version == version]}
    directory = (ref.path if ref.kind == "directory" else
                 registry.wh.registry_artifact(dataset, registered.sha256) if registered else None)
    meta: dict[str, Any] = {}
    for name in ("config.json", "metrics.json"):
        try:
            meta[name] = json.loads(read_bytes(Path(directory) / name, name)) if directory else {}
        except (MissingInputError, ValueError):
            meta[name] = {}
    config, metrics = meta["config.json"], meta["metrics.json"]
    out.update({
        "arch": config.get("arch") or (registered.arch if registered else None),
        "kind": config.get("kind", "trained") if config else None,
        "epochs_run": metrics.get("epochs_run"), "best_epoch": metrics.get("best_epoch"),
        "training_range": (f"{metrics['start']} .. {metrics['end']}"
                           if metrics.get("start") and metrics.get("end") else None),
        "seed": metrics.get("seed"), "train_rows": metrics.get("train_rows"),
        "val_auc": metrics.get("val_auc"), "artifact": str(directory) if directory else None})
    return out
