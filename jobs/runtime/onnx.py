"""ONNX in the jobs: ``mmoe models export``, and ``scoring.runtime: onnxruntime`` for trained
models (the model exported once per job on the driver, shipped with the artifact, one
onnxruntime session per Python worker, cached by the artifact's checksum).

Imported models (``mmoe models import``) are ONNX graphs already: they always score through
onnxruntime, whatever ``scoring.runtime`` says.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.core.config import RUNTIMES, JobConfig
from jobs.core.errors import InputError, RegistryError
from jobs.core.manifest import RunRecord
from jobs.core.modelref import ModelRef
from jobs.core.registry import Registry, directory_choice, find_dataset, resolve_model
from jobs.core.warehouse import Warehouse, parse_date, safe_name, sha256_hex, write_bytes
from mmoe_model.artifact import ModelArtifact
from mmoe_model.onnx_export import export_onnx
from mmoe_model.onnx_graph import OnnxRunner, check_graph

EXPORT_FORMATS = ("onnx",)
_EXPORTED: dict[str, bytes] = {}  # artifact sha256 -> its graph (driver side, the last one)


def exported_graph(artifact: ModelArtifact) -> bytes:
    """The artifact's whole model as ONNX bytes, exported once per process and model."""
    if artifact.imported:
        return artifact.graph
    graph = _EXPORTED.get(artifact.sha256)
    if graph is None:
        graph = export_onnx(artifact)
        _EXPORTED.clear()
        _EXPORTED[artifact.sha256] = graph
    return graph


def runtime_graph(artifact: ModelArtifact, runtime: str) -> bytes | None:
    """What a trained model ships for ``runtime``: its exported graph for onnxruntime, None
    for torch (and for imported models, whose graph is one of the artifact's files)."""
    if runtime not in RUNTIMES:
        raise InputError(f"scoring.runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    if runtime == "torch" or artifact.imported:
        return None
    return exported_graph(artifact)


class OnnxScorer:
    """A trained artifact scored through onnxruntime: ``predict(frame)`` runs the exported graph;
    gates (``with_gates``) still come from the torch model, which alone computes them. Every
    other attribute is the artifact's."""

    def __init__(self, artifact: ModelArtifact, graph: bytes) -> None:
        self.artifact = artifact
        self.runner = OnnxRunner(graph, artifact.spec, check_graph(graph, artifact.spec))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.artifact, name)

    def use_threads(self, threads: int) -> None:
        self.runner = self.runner.with_threads(threads)

    def predict(self, frame, with_gates: bool = False, batch_size: int | None = None):
        if with_gates:
            return self.artifact.predict(frame, with_gates=True, batch_size=batch_size)
        return self.runner.predict(frame)


# --------------------------------------------------------------------------------------------
# mmoe models export


@dataclass
class ExportResult:
    model_version: str
    model_sha256: str
    out: Path
    graph_sha256: str
    size: int
    source: str

    def record(self) -> RunRecord:
        return RunRecord(model_version=self.model_version, model_sha256=self.model_sha256,
                         outputs={"onnx": str(self.out)},
                         details={"format": "onnx", "graph_sha256": self.graph_sha256,
                                  "bytes": self.size, "model_source": self.source})


def export_dataset(cfg: JobConfig, model: str | Path, dataset: str | None = None) -> str:
    """The dataset a MODEL reference to export belongs to (``--dataset`` when it is ambiguous)."""
    ref = ModelRef.parse(model)
    if dataset is not None:
        return safe_name(dataset, "--dataset")
    if ref.kind == "directory":
        return ModelArtifact.from_files(directory_choice(ref.path).files).spec.name
    if ref.kind == "version":
        return find_dataset(cfg, ref.value)
    wh = Warehouse(cfg.warehouse)
    holders = [d for d in wh.registry_datasets()
               if any(p.alias == ref.value for p in Registry.read(wh, d).promotions)]
    if len(holders) != 1:
        raise RegistryError(f"{ref} is promoted in {len(holders)} registries "
                            f"({', '.join(holders) or 'none'}); name one with --dataset")
    return holders[0]


def export_model(cfg: JobConfig, model: str | Path, fmt: str, out: Path,
                 dataset: str | None = None, ds: str | None = None) -> ExportResult:
    """Write MODEL (a directory, a version, or ``@alias`` in force on ``ds``, default today UTC)
    as one ONNX graph to ``out``; the graph is checked against the contract before it is
    written."""
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"--format must be one of {', '.join(EXPORT_FORMATS)}; got {fmt!r}")
    name = export_dataset(cfg, model, dataset)
    day = (parse_date(ds, "--ds") if ds else dt.datetime.now(dt.timezone.utc).date()).isoformat()
    choice = resolve_model(cfg, name, day, model)
    artifact = ModelArtifact.from_files(choice.files)
    graph = exported_graph(artifact)
    check_graph(graph, artifact.spec)  # what we write must be importable
    write_bytes(Path(out), graph)
    return ExportResult(artifact.model_version, artifact.sha256, Path(out), sha256_hex(graph),
                        len(graph), choice.source)
