"""Model artifacts: a directory of plain files, every one checksummed, no pickle anywhere.

Layout (format ``mmoe-artifact/1``)::

    config.json          arch, ModelConfig (gate kind, k, expert layout, ...), task names,
                         input layout
    spec.json            the dataset spec the model was trained on (parse_spec-compatible dict;
                         numeric encodings and feature groups included)
    normalization.json   per dense feature {"mean", "std"}, plus "edges" (bins + 1 training-set
                         quantiles) for quantile / pwl encoded features
    model.safetensors    the weights (state_dict)
    metrics.json         training metrics (per epoch, best epoch, validation AUC, versions);
                         no wall-clock times, so the same training gives the same checksum
    model_version        one line: the version string below
    MANIFEST.json        {"format", "model_version", "files": {name: sha256 hex}} for all the above

``model_version`` is ``<arch>-<12 hex>``: the first 12 hex digits of a SHA-256 over the files that
determine predictions (config, spec, normalisation, weights; not the metrics). Retraining with the
same data and seed reproduces the same version, so a rerun of scoring replaces its partition; any
change to what the model computes gives a new one. It only uses ``[a-z0-9-]``, a safe path
component. ``ModelArtifact.sha256`` is the SHA-256 of MANIFEST.json, i.e. of the whole artifact.

Every load (``from_files`` / ``load``) recomputes every checksum and the version and refuses an
artifact that does not match with :class:`ArtifactTampered`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from mmoe_model.errors import ArtifactError, ArtifactTampered, SpecMismatch
from mmoe_model.features import FeatureEncoder, Frame, InputLayout
from mmoe_model.models import ModelConfig, MultiTaskModel, build_model
from mmoe_model.onnx_graph import GraphSignature, OnnxRunner, check_graph
from schemas.spec import DatasetSpec, SpecError, parse_spec

FORMAT = "mmoe-artifact/1"
CONFIG = "config.json"
SPEC = "spec.json"
NORMALIZATION = "normalization.json"
WEIGHTS = "model.safetensors"
METRICS = "metrics.json"
VERSION = "model_version"
MANIFEST = "MANIFEST.json"
CONTENT_FILES = (CONFIG, SPEC, NORMALIZATION, WEIGHTS, METRICS, VERSION)
# The files whose bytes decide what the model predicts: the version fingerprints exactly these.
_VERSIONED = (CONFIG, SPEC, NORMALIZATION, WEIGHTS)
# An imported ONNX graph (``mmoe models import``): config.json says ``"kind": "onnx"``, the graph
# is model.onnx, metrics.json records the import (who, when, source file and its SHA-256, why).
ONNX_KIND = "onnx"
GRAPH = "model.onnx"
IMPORTED_FILES = (CONFIG, SPEC, GRAPH, METRICS, VERSION)
_IMPORTED_VERSIONED = (CONFIG, SPEC, GRAPH)

# Fields that change how a feature is encoded. Validation-only settings (null / OOV thresholds,
# the OOV policy) may change without invalidating a model.
_ENCODING_FIELDS = {
    "dense": ("dtype", "min", "max", "fill", "normalize", "encoding", "bins", "embedding_dim"),
    "categorical": ("dtype", "vocabulary", "hash_buckets", "embedding_dim"),
}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def _finite(obj: Any) -> Any:
    """Metrics as strict JSON: NaN / inf (a diverged loss) become null instead of failing."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj


def spec_to_dict(spec: DatasetSpec) -> dict[str, Any]:
    """A JSON-able dict that ``schemas.spec.parse_spec`` turns back into an equal spec."""
    def clean(d: dict[str, Any]) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if v is not None}

    out = {
        "name": spec.name,
        "description": spec.description,
        "keys": [asdict(k) for k in spec.keys],
        "features": [clean(asdict(f)) for f in spec.features],
        "tasks": [clean(asdict(t)) for t in spec.tasks],
        "attributes": [asdict(a) for a in spec.attributes],
        "segments": list(spec.segments),
        "user_column": spec.user_column,
        "row_count": asdict(spec.row_count),
        "source": spec.source,
    }
    if spec.catalog is not None:  # only when set: specs without one keep their old bytes
        out["catalog"] = {k: v for k, v in asdict(spec.catalog).items() if v is not None}
    if spec.request_column is not None:  # the same
        out["request_column"] = spec.request_column
    return out


def model_version_of(arch: str, files: Mapping[str, bytes],
                     versioned: tuple[str, ...] = _VERSIONED) -> str:
    digest = hashlib.sha256()
    for name in versioned:
        digest.update(name.encode() + b"\0" + _sha256(files[name]).encode() + b"\n")
    return f"{arch}-{digest.hexdigest()[:12]}"


def build_artifact_files(model: MultiTaskModel, model_config: ModelConfig, spec: DatasetSpec,
                         encoder: FeatureEncoder, metrics: Mapping[str, Any] | None = None
                         ) -> dict[str, bytes]:
    """Every file of the artifact, MANIFEST.json included, as bytes."""
    if model.num_tasks != len(spec.tasks):
        raise ArtifactError(f"model has {model.num_tasks} task(s) but spec {spec.name!r} has "
                            f"{len(spec.tasks)}")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    files = {
        CONFIG: _json_bytes({
            "format": FORMAT,
            "arch": model_config.arch,
            "model_config": model_config.to_dict(),
            "task_names": spec.task_names,
            "layout": encoder.layout.to_dict(),
        }),
        SPEC: _json_bytes(spec_to_dict(spec)),
        NORMALIZATION: _json_bytes(encoder.stats),
        # One metadata key only: safetensors stores metadata in a hash map whose order varies
        # between calls, and the version must be a pure function of the weights.
        WEIGHTS: save_safetensors(state, metadata={"format": "pt"}),
    }
    version = model_version_of(model_config.arch, files)
    files[METRICS] = _json_bytes(_finite({
        **(dict(metrics) if metrics else {}),
        "trained_with": {"torch": torch.__version__, "numpy": np.__version__},
    }))
    files[VERSION] = (version + "\n").encode()
    files[MANIFEST] = _json_bytes({
        "format": FORMAT,
        "model_version": version,
        "files": {name: _sha256(files[name]) for name in CONTENT_FILES},
    })
    return files


def save_artifact(path: str | Path, model: MultiTaskModel, model_config: ModelConfig,
                  spec: DatasetSpec, encoder: FeatureEncoder,
                  metrics: Mapping[str, Any] | None = None) -> "ModelArtifact":
    """Write the artifact files into directory ``path`` and return it loaded back (so the caller
    holds what is on disk, checksums verified).

    A plain write, for library callers (scripts, tests). The ``mmoe train`` job does not use it:
    it stages :func:`build_artifact_files` and swaps the directory in through the warehouse's
    one atomic-replace implementation (``jobs.core.warehouse.replacing``). An existing non-empty
    directory that is not an artifact is refused.
    """
    path = Path(path)
    files = build_artifact_files(model, model_config, spec, encoder, metrics)
    check_artifact_target(path)
    write_artifact_files(path, files)
    return ModelArtifact.from_files(files)


def check_artifact_target(path: Path) -> None:
    """Refuse to overwrite anything but an artifact (or an empty directory)."""
    if path.exists():
        if not path.is_dir():
            raise ArtifactError(f"{path} exists and is not a directory")
        if any(path.iterdir()) and not (path / MANIFEST).is_file():
            raise ArtifactError(f"{path} is a non-empty directory that is not a model artifact; "
                                "refusing to overwrite it")


def write_artifact_files(path: Path, files: Mapping[str, bytes]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (path / name).write_bytes(data)


def read_artifact_files(path: str | Path) -> dict[str, bytes]:
    """All top-level files of an artifact directory (names starting with '.' skipped)."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"model artifact {path} does not exist or is not a directory")
    try:
        files = {p.name: p.read_bytes() for p in sorted(path.iterdir())
                 if p.is_file() and not p.name.startswith(".")}
    except OSError as exc:
        raise ArtifactError(f"cannot read model artifact {path}: {exc}") from None
    if MANIFEST not in files:
        raise ArtifactError(f"{path} is not a model artifact: no {MANIFEST}")
    return files


def _load_json(files: Mapping[str, bytes], name: str) -> Any:
    try:
        return json.loads(files[name])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"artifact file {name} is not valid JSON: {exc}") from None


def _verify(files: Mapping[str, bytes], required: tuple[str, ...] = CONTENT_FILES
            ) -> dict[str, Any]:
    if MANIFEST not in files:
        raise ArtifactError(f"artifact has no {MANIFEST}")
    manifest = _load_json(files, MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{MANIFEST} is not a {FORMAT} manifest")
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise ArtifactError(f"{MANIFEST} has no file list")
    for name in required:
        if name not in listed:
            raise ArtifactError(f"{MANIFEST} does not list {name}")
    for name, expected in listed.items():
        if name not in files:
            raise ArtifactError(f"artifact file {name} is missing")
        actual = _sha256(files[name])
        if actual != expected:
            raise ArtifactTampered(f"artifact file {name} does not match its SHA-256 in "
                                   f"{MANIFEST} (expected {str(expected)[:12]}…, "
                                   f"got {actual[:12]}…)")
    return manifest


def _checked_version(files: Mapping[str, bytes], manifest: Mapping[str, Any], version: str) -> str:
    """``version`` (computed from the content) when the model_version file and the manifest
    record exactly it; ArtifactTampered otherwise."""
    recorded = files[VERSION].decode(errors="replace").strip()
    if version != recorded or manifest.get("model_version") != recorded:
        raise ArtifactTampered(f"artifact model_version {recorded!r} does not match its "
                               f"content (expected {version!r})")
    return version


def _kind(files: Mapping[str, bytes]) -> str | None:
    """``config.json``'s kind (None for a trained artifact); unreadable configs are left to the
    loader's own checks."""
    try:
        config = json.loads(files[CONFIG])
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
    return config.get("kind") if isinstance(config, dict) else None


def build_imported_files(graph: bytes, spec: DatasetSpec,
                         provenance: Mapping[str, Any]) -> dict[str, bytes]:
    """The artifact files of ONNX ``graph`` for ``spec`` (checked against it first: a one-line
    GraphRefused otherwise); ``provenance`` (who, when, source, reason) goes into metrics.json."""
    signature = check_graph(graph, spec)
    OnnxRunner(graph, spec, signature)  # onnxruntime must load it here, not first on a worker
    files = {
        CONFIG: _json_bytes({"format": FORMAT, "kind": ONNX_KIND, "arch": ONNX_KIND,
                             "task_names": spec.task_names, "graph": signature.to_dict()}),
        SPEC: _json_bytes(spec_to_dict(spec)),
        GRAPH: bytes(graph),
    }
    version = model_version_of(ONNX_KIND, files, _IMPORTED_VERSIONED)
    files[METRICS] = _json_bytes(_finite({"imported": {**provenance, "onnx": onnx.__version__,
                                                       "onnxruntime": ort.__version__}}))
    files[VERSION] = (version + "\n").encode()
    files[MANIFEST] = _json_bytes({
        "format": FORMAT, "model_version": version,
        "files": {name: _sha256(files[name]) for name in IMPORTED_FILES},
    })
    return files


def _describe_diff(model_feat: Any, data_feat: Any) -> str | None:
    if type(model_feat) is not type(data_feat):
        return f"kind {model_feat.kind!r} (model) vs {data_feat.kind!r} (data)"
    diffs = []
    for name in _ENCODING_FIELDS[model_feat.kind]:
        a, b = getattr(model_feat, name), getattr(data_feat, name)
        if a != b:
            if isinstance(a, tuple) and isinstance(b, tuple):
                extra, gone = sorted(set(b) - set(a)), sorted(set(a) - set(b))
                detail = f"+{extra[:3]} -{gone[:3]}" if extra or gone else "order differs"
                diffs.append(f"{name} {detail}")
            else:
                diffs.append(f"{name} {a!r} (model) vs {b!r} (data)")
    return "; ".join(diffs) or None


class ModelArtifact:
    """A verified, loaded artifact: the model (eval mode, CPU), its encoder and its spec."""

    def __init__(self, *, model_version: str, sha256: str, arch: str, model_config: ModelConfig,
                 task_names: list[str], spec: DatasetSpec, encoder: FeatureEncoder,
                 model: MultiTaskModel, metrics: dict[str, Any]) -> None:
        self.model_version = model_version
        self.sha256 = sha256
        self.arch = arch
        self.model_config = model_config
        self.task_names = task_names
        self.spec = spec
        self.encoder = encoder
        self.model = model
        self.metrics = metrics

    imported = False  # True for an ImportedArtifact (an ONNX graph, no torch model)
    precision = "fp32"  # what ``model`` computes in (:meth:`with_precision`)

    def with_precision(self, precision: str) -> "ModelArtifact":
        """This artifact scoring in ``precision`` (``fp32`` | ``bf16`` | ``int8``,
        :mod:`mmoe_model.precision`): a shallow copy whose ``model`` is the converted inference
        copy; version, checksum, files, spec and encoder are this artifact's. ``fp32`` returns
        ``self``. An imported ONNX graph refuses anything but fp32 (one line)."""
        from mmoe_model.precision import check_precision, convert_model

        check_precision(precision, self.imported, self.model_version)
        if precision == self.precision:
            return self
        other = copy.copy(self)
        base = getattr(self, "float_model", self.model)  # always from the trained model
        other.float_model = base
        other.model = base if precision == "fp32" else convert_model(base, precision)
        other.precision = precision
        return other

    def use_threads(self, threads: int) -> None:
        """Intra-op threads for this model (torch's are per process: jobs.runtime.worker)."""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.model_version!r}, dataset={self.spec.name!r}, "
                f"tasks={self.task_names})")

    # ---------------------------------------------------------------------------------- loading

    @classmethod
    def load(cls, path: str | Path) -> "ModelArtifact":
        return cls.from_files(read_artifact_files(path))

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> "ModelArtifact":
        """Verify every checksum and the version, then rebuild the model from the bytes. An
        imported graph (``config.json`` kind ``onnx``) loads as an :class:`ImportedArtifact`."""
        if _kind(files) == ONNX_KIND:
            return ImportedArtifact.from_files(files)
        manifest = _verify(files)
        config = _load_json(files, CONFIG)
        try:
            arch = config["arch"]
            model_config = ModelConfig.from_dict(config["model_config"])
            task_names = [str(t) for t in config["task_names"]]
            layout = InputLayout.from_dict(config["layout"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"artifact {CONFIG} is malformed: {exc}") from None
        version = _checked_version(files, manifest, model_version_of(arch, files))
        try:
            spec = parse_spec(_load_json(files, SPEC), origin=f"artifact {SPEC}")
        except SpecError as exc:
            raise ArtifactError(str(exc)) from None
        if spec.task_names != task_names or InputLayout.from_spec(spec) != layout:
            raise ArtifactError(f"artifact {CONFIG} and {SPEC} disagree on tasks or inputs")
        encoder = FeatureEncoder(spec, _load_json(files, NORMALIZATION))
        # The spec's layout equals the recorded one and also carries the feature names that
        # field-split experts select their columns by.
        model = build_model(model_config, encoder.layout, len(task_names))
        try:
            state = load_safetensors(bytes(files[WEIGHTS]))
            model.load_state_dict(state, strict=True)
        except (SafetensorError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ArtifactError(f"artifact {WEIGHTS} does not fit the {arch} model: {first}") \
                from None
        model.eval()
        artifact = cls(model_version=version, sha256=_sha256(files[MANIFEST]), arch=arch,
                       model_config=model_config, task_names=task_names, spec=spec,
                       encoder=encoder, model=model, metrics=_load_json(files, METRICS))
        artifact.files = dict(files)  # the verified bytes, e.g. to ship to Spark workers
        return artifact

    # ---------------------------------------------------------------------------------- using

    def check_spec(self, spec: DatasetSpec) -> None:
        """Refuse data whose spec differs from the training spec in anything the model reads:
        key columns, task names and order, the feature set, and each feature's encoding fields
        (dense: dtype/min/max/fill/normalize; categorical: dtype/vocabulary/hash_buckets/
        embedding_dim). Validation thresholds may differ."""
        mine = self.spec
        where = f"data spec {spec.name!r} differs from the model's training spec {mine.name!r}"
        if [(k.name, k.dtype) for k in spec.keys] != [(k.name, k.dtype) for k in mine.keys]:
            raise SpecMismatch(f"{where}: key columns {spec.key_names} (data) vs "
                               f"{mine.key_names} (model)")
        if spec.task_names != mine.task_names:
            raise SpecMismatch(f"{where}: tasks {spec.task_names} (data) vs "
                               f"{mine.task_names} (model)")
        data_features = {f.name: f for f in spec.features}
        missing = [f.name for f in mine.features if f.name not in data_features]
        if missing:
            raise SpecMismatch(f"{where}: feature column(s) {missing} missing from the data spec")
        extra = [n for n in data_features if n not in {f.name for f in mine.features}]
        if extra:
            raise SpecMismatch(f"{where}: feature column(s) {extra} unknown to the model")
        for feature in mine.features:
            diff = _describe_diff(feature, data_features[feature.name])
            if diff:
                raise SpecMismatch(f"{where}: column {feature.name!r}: {diff}")

    def predict(self, frame: Frame, with_gates: bool = False, batch_size: int | None = None):
        """Probabilities float64 [B, T] (task order ``task_names``); with ``with_gates`` also the
        last layer's gate weights float32 [B, T, E] (E = 0 for archs without gates).

        ``frame``: a pandas DataFrame or pyarrow Table/RecordBatch with the spec's feature
        columns. ``batch_size`` bounds the rows per forward pass (None: all at once)."""
        rows = len(frame) if isinstance(frame, pd.DataFrame) else frame.num_rows
        step = batch_size or max(rows, 1)
        probs, gates = [], []
        with torch.inference_mode():
            for start in range(0, max(rows, 1), step):
                part = frame.iloc[start:start + step] if isinstance(frame, pd.DataFrame) \
                    else frame.slice(start, step)
                dense, cats = self.encoder.encode(part)
                logits, g = self.model(dense, cats, return_gates=True)
                probs.append(torch.sigmoid(logits.double()).numpy())
                if with_gates:
                    gates.append(g.permute(1, 0, 2).float().contiguous().numpy())  # [B, T, E]
        p = probs[0] if len(probs) == 1 else np.concatenate(probs)
        if not with_gates:
            return p
        return p, (gates[0] if len(gates) == 1 else np.concatenate(gates))


class ImportedArtifact(ModelArtifact):
    """An imported ONNX graph with the artifact's surface: version, checksum, spec, ``check_spec``
    and ``predict(frame)`` (through onnxruntime). It has no torch model, encoder or gates:
    ``model``, ``encoder`` and ``model_config`` are None."""

    imported = True

    def __init__(self, *, model_version: str, sha256: str, task_names: list[str],
                 spec: DatasetSpec, graph: bytes, signature: GraphSignature,
                 metrics: dict[str, Any]) -> None:
        super().__init__(model_version=model_version, sha256=sha256, arch=ONNX_KIND,
                         model_config=None, task_names=task_names, spec=spec, encoder=None,
                         model=None, metrics=metrics)
        self.graph, self.signature = graph, signature
        self.runner = OnnxRunner(graph, spec, signature)

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> "ImportedArtifact":
        """Verify every checksum (the graph's bytes included) and the version, re-check the graph
        against its spec and build its onnxruntime session."""
        manifest = _verify(files, IMPORTED_FILES)
        config = _load_json(files, CONFIG)
        version = _checked_version(files, manifest,
                                   model_version_of(ONNX_KIND, files, _IMPORTED_VERSIONED))
        try:
            spec = parse_spec(_load_json(files, SPEC), origin=f"artifact {SPEC}")
            task_names = [str(t) for t in config["task_names"]]
            recorded_signature = GraphSignature.from_dict(config["graph"])
        except SpecError as exc:
            raise ArtifactError(str(exc)) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"artifact {CONFIG} is malformed: {exc}") from None
        signature = check_graph(files[GRAPH], spec)
        if signature != recorded_signature or spec.task_names != task_names:
            raise ArtifactError(f"artifact {CONFIG} does not describe its {GRAPH}")
        artifact = cls(model_version=version, sha256=_sha256(files[MANIFEST]),
                       task_names=task_names, spec=spec, graph=bytes(files[GRAPH]),
                       signature=signature, metrics=_load_json(files, METRICS))
        artifact.files = dict(files)
        return artifact

    def use_threads(self, threads: int) -> None:
        self.runner = self.runner.with_threads(threads)

    def predict(self, frame: Frame, with_gates: bool = False, batch_size: int | None = None):
        if with_gates:
            raise ArtifactError(f"{self.model_version} is an imported ONNX graph: it has no "
                                f"gates to report (--with-gates is for trained models)")
        rows = len(frame) if isinstance(frame, pd.DataFrame) else frame.num_rows
        step = batch_size or max(rows, 1)
        parts = [self.runner.predict(frame.iloc[s:s + step] if isinstance(frame, pd.DataFrame)
                                     else frame.slice(s, step))
                 for s in range(0, max(rows, 1), step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


__all__ = [
    "ImportedArtifact", "build_imported_files", "ModelArtifact", "read_artifact_files", "save_artifact", "build_artifact_files",
    "spec_to_dict", "model_version_of", "FORMAT",
]
