"""Security (issue 11, item 5): nothing read from disk is unpickled or evaluated; YAML is
safe-loaded; warehouse paths are built only from validated parts; artifacts are verified before
use on the driver and in every executor. (The smuggled-pickle test, through the CLI and the
executors, is in tests/test_bad_input.py.)"""

from __future__ import annotations

import ast

import pytest
from _reliability import REPO

PACKAGES = ("jobs", "mmoe_model", "schemas", "airflow_dags")

# (module alias, attribute) calls that turn bytes into code or objects.
FORBIDDEN_ATTRS = {
    ("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"),
    ("cPickle", "load"), ("cPickle", "loads"), ("cloudpickle", "load"), ("cloudpickle", "loads"),
    ("dill", "load"), ("dill", "loads"), ("marshal", "load"), ("marshal", "loads"),
    ("joblib", "load"), ("torch", "load"), ("yaml", "load"), ("yaml", "unsafe_load"),
    ("yaml", "full_load"), ("yaml", "load_all"), ("pd", "read_pickle"),
    ("pandas", "read_pickle"), ("shelve", "open"),
}
FORBIDDEN_NAMES = {"eval", "exec", "__import__"}


def dangerous_calls(source: str, filename: str = "<src>") -> list[str]:
    """Calls in ``source`` that could execute what a file contains."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in FORBIDDEN_NAMES:
            found.append(f"{filename}:{node.lineno} {func.id}()")
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
                and (func.value.id, func.attr) in FORBIDDEN_ATTRS \
                and not _weights_only(func.value.id, func.attr, node):
            found.append(f"{filename}:{node.lineno} {func.value.id}.{func.attr}()")
        elif isinstance(func, ast.Attribute) and func.attr == "load" \
                and any(k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant)
                                                         and k.value.value is False)
                        for k in node.keywords):
            found.append(f"{filename}:{node.lineno} load(allow_pickle=...)")
    return found


def _weights_only(module: str, attr: str, call: ast.Call) -> bool:
    """``torch.load(..., weights_only=True)``: torch's restricted unpickler (tensors, containers
    and plain values only, no code), used for training checkpoints."""
    return (module, attr) == ("torch", "load") and any(
        k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in call.keywords)


def test_the_scanner_finds_what_it_looks_for():
    bad = ("import pickle, yaml, torch\n"
           "pickle.loads(b'')\nyaml.load(s)\ntorch.load('m.pt')\neval('1')\n"
           "np.load('x.npy', allow_pickle=True)\n")
    assert len(dangerous_calls(bad)) == 5
    assert dangerous_calls("yaml.safe_load(s)\nnp.load('x', allow_pickle=False)\n") == []
    assert dangerous_calls("torch.load('c.pt', weights_only=True)\n") == []
    assert len(dangerous_calls("torch.load('c.pt', weights_only=False)\n")) == 1


def test_no_pickle_or_eval_of_anything_read_from_disk():
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            found += dangerous_calls(path.read_text(), str(path.relative_to(REPO)))
    assert found == []


def test_torch_weights_are_read_with_safetensors_only(tmp_path):
    """Weights come from safetensors (a plain tensor format), never a pickle: a torch.save file
    in place of the weights is refused by its checksum first, and would not even parse."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load

    torch.save({"w": torch.zeros(2)}, tmp_path / "w.pt")
    with pytest.raises(SafetensorError):
        load((tmp_path / "w.pt").read_bytes())


@pytest.mark.parametrize("call", [
    lambda wh: wh.partition("../etc", "features", "2026-01-01"),
    lambda wh: wh.partition("synth/x", "features", "2026-01-01"),
    lambda wh: wh.partition("synth", "features", "../2026-01-01"),
    lambda wh: wh.partition("synth", "features", "2026-01-01/.."),
    lambda wh: wh.partition("synth", "predictions", "2026-01-01", model_version="../../x"),
    lambda wh: wh.partition("synth", "predictions", "2026-01-01", model_version=".hidden"),
    lambda wh: wh.catalog("synth", "../users"),
], ids=["dataset-dotdot", "dataset-slash", "ds-dotdot", "ds-suffix", "version-dotdot",
        "version-hidden", "catalog-dotdot"])
def test_paths_are_built_only_from_validated_parts(tmp_path, call):
    from jobs.core.errors import InputError
    from jobs.core.warehouse import Warehouse

    with pytest.raises(InputError):
        call(Warehouse(tmp_path))


def test_unknown_table_is_refused(tmp_path):
    from jobs.core.warehouse import Warehouse

    with pytest.raises(ValueError, match="unknown table"):
        Warehouse(tmp_path).table("synth", "../../etc")


def test_executors_verify_the_artifact_they_are_sent(tmp_path):
    """The executor-side loader (the broadcast bytes → a model) checks every SHA-256 itself: a
    broadcast altered on its way is refused, not run."""
    from _reliability import tiny_model

    from jobs.runtime import worker
    from mmoe_model.artifact import read_artifact_files
    from mmoe_model.errors import ArtifactTampered
    from schemas import load_spec

    files = read_artifact_files(tiny_model(tmp_path / "m", load_spec("synth")))
    weights = bytearray(files["model.safetensors"])
    weights[100] ^= 0x01
    worker._WORKER_MODELS.clear()
    with pytest.raises(ArtifactTampered):
        worker.worker_artifact({**files, "model.safetensors": bytes(weights)}, "any-sha")
    assert not worker._WORKER_MODELS


def test_config_yaml_is_safe_loaded(tmp_path):
    """A YAML tag that would build a Python object is refused as an unreadable config."""
    from jobs.core.config import load_config
    from jobs.core.errors import ConfigError

    marker = tmp_path / "PWNED"
    config = tmp_path / "c.yaml"
    config.write_text(f"warehouse: !!python/object/apply:pathlib.Path.touch [{str(marker)!r}]\n")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(config)
    assert not marker.exists()
