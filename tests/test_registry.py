"""The model registry: content-addressed copies verified on every read, an append-only history,
the model in force per date across promotions, and the one-line refusals."""

from __future__ import annotations

import getpass
import json

import pytest
from tiny_models import tiny_model
from typer.testing import CliRunner

from jobs.core.errors import InputError, RegistryError
from jobs.core.registry import (
    Registry,
    list_models,
    models_in_force,
    promote_model,
    register_model,
    resolve_model,
)
from jobs.core.warehouse import Warehouse, read_json_lines
from mmoe_model.errors import SpecMismatch


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    return tiny_model(base / "a", seed=1), tiny_model(base / "b", seed=2)


def _version(directory) -> str:
    return (directory / "model_version").read_text().strip()


def test_register_copies_content_addressed_and_records_who_when_why(job_config, artifacts):
    first, _ = artifacts
    result = register_model(job_config, first, reason="first model")
    wh = Warehouse(job_config.warehouse)
    stored = wh.registry_artifact("synth", result.sha256)
    assert (stored / "MANIFEST.json").read_bytes() == (first / "MANIFEST.json").read_bytes()
    import hashlib

    assert hashlib.sha256((stored / "MANIFEST.json").read_bytes()).hexdigest() == stored.name
    [event] = read_json_lines(wh.registry_history("synth"))
    assert event["event"] == "register" and event["version"] == _version(first)
    assert event["by"] == getpass.getuser() and event["reason"] == "first model"
    assert event["at"].endswith("+00:00")  # UTC
    # registering the same artifact again changes nothing
    again = register_model(job_config, first)
    assert again.events == [] and len(read_json_lines(wh.registry_history("synth"))) == 1


def test_model_in_force_follows_the_promotions_by_effective_date(job_config, artifacts):
    first, second = artifacts
    v1 = register_model(job_config, first, alias="champion", effective="2026-11-01").version
    v2 = register_model(job_config, second).version
    promote_model(job_config, v2, "champion", effective="2026-11-05", reason="better AUC")
    promote_model(job_config, v1, "challenger", effective="2026-11-05")

    def champion(ds):
        return resolve_model(job_config, "synth", ds, "@champion").version

    assert champion("2026-11-01") == v1
    assert champion("2026-11-04") == v1
    assert champion("2026-11-05") == v2      # the day the promotion takes effect
    assert champion("2026-12-31") == v2
    # a later promotion with the same effective date wins the tie
    promote_model(job_config, v1, "champion", effective="2026-11-05", reason="rollback")
    assert champion("2026-11-05") == v1
    assert champion("2026-11-04") == v1
    assert models_in_force(job_config, "synth", "2026-11-05") == [
        {"alias": "champion", "version": v1}]  # challenger == champion: scored once
    promote_model(job_config, v2, "challenger", effective="2026-11-06")
    assert models_in_force(job_config, "synth", "2026-11-06") == [
        {"alias": "champion", "version": v1}, {"alias": "challenger", "version": v2}]
    assert models_in_force(job_config, "synth", "2026-11-02") == [
        {"alias": "champion", "version": v1}]
    # the history is append-only: every promotion is still there, in order
    events = read_json_lines(Warehouse(job_config.warehouse).registry_history("synth"))
    assert [e["event"] for e in events] == ["register", "promote", "register", "promote",
                                            "promote", "promote", "promote"]
    rows = {r["version"]: r for r in list_models(job_config)}
    assert "@champion from 2026-11-01" in rows[v1]["aliases"]
    assert "@champion from 2026-11-05" in rows[v2]["aliases"]


def test_refusals_are_one_line(job_config, artifacts):
    first, second = artifacts
    v1 = register_model(job_config, first, alias="champion", effective="2026-11-03").version
    with pytest.raises(RegistryError, match="no promotion in force on 2026-11-02 .*2026-11-03"):
        resolve_model(job_config, "synth", "2026-11-02", "@champion")
    with pytest.raises(RegistryError, match="unknown alias @nope"):
        resolve_model(job_config, "synth", "2026-11-03", "@nope")
    with pytest.raises(RegistryError, match="unknown model version 'mmoe-000000000000'"):
        promote_model(job_config, "mmoe-000000000000", "champion", dataset="synth")
    with pytest.raises(RegistryError, match="unknown model version"):
        promote_model(job_config, "mmoe-000000000000", "champion")
    with pytest.raises(RegistryError, match="neither an artifact directory nor a registered"):
        resolve_model(job_config, "synth", "2026-11-03", _version(second))
    with pytest.raises(InputError, match="--effective must be YYYY-MM-DD"):
        promote_model(job_config, v1, "champion", effective="2026/11/05")
    assert resolve_model(job_config, "synth", "2026-11-03", v1).version == v1


def test_tampered_stored_artifact_is_refused(job_config, artifacts):
    first, _ = artifacts
    result = register_model(job_config, first, alias="champion", effective="2026-11-01")
    stored = Warehouse(job_config.warehouse).registry_artifact("synth", result.sha256)
    weights = stored / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(RegistryError, match="tampered with: file model.safetensors"):
        resolve_model(job_config, "synth", "2026-11-02", "@champion")
    with pytest.raises(RegistryError, match="tampered"):
        promote_model(job_config, result.version, "challenger", effective="2026-11-01")
    weights.write_bytes(original)
    # a consistent forgery (files and their manifest rewritten together) breaks the address
    manifest = json.loads((stored / "MANIFEST.json").read_text())
    manifest["note"] = "forged"
    (stored / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(RegistryError, match="not its registered checksum"):
        resolve_model(job_config, "synth", "2026-11-02", result.version)


def test_an_artifact_whose_spec_differs_from_the_dataset_is_refused(job_config, tmp_path):
    import dataclasses

    import schemas

    real = schemas.load_spec("synth")
    changed = dataclasses.replace(real, features=tuple(
        dataclasses.replace(f, vocabulary=("android", "ios")) if f.name == "platform" else f
        for f in real.features))
    # build the artifact against the changed spec (still named synth), register it against
    # the real one
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(schemas, "load_spec", lambda name: changed)
        artifact = tiny_model(tmp_path / "odd", seed=3)
    with pytest.raises(SpecMismatch, match="column 'platform'"):
        register_model(job_config, artifact)
    assert Registry.read(Warehouse(job_config.warehouse), "synth").models == {}


def test_cli_register_promote_list(job_config, artifacts):
    from jobs.cli import app

    first, second = artifacts
    runner = CliRunner()
    wh = ["--warehouse", str(job_config.warehouse)]
    out = runner.invoke(app, wh + ["models", "register", str(first), "--alias", "champion",
                                   "--effective", "2026-11-01", "--reason", "launch"])
    assert out.exit_code == 0, out.output
    manifest = json.loads(out.stdout.strip().splitlines()[-1])
    assert manifest["status"] == "succeeded" and manifest["model_version"] == _version(first)
    out = runner.invoke(app, wh + ["models", "register", str(second)])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, wh + ["models", "promote", _version(second), "--alias", "challenger",
                                   "--effective", "2026-11-02"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, wh + ["models", "list"])
    assert out.exit_code == 0, out.output
    header, *lines = out.stdout.strip().splitlines()
    assert header.split() == ["dataset", "version", "checksum", "spec", "registered", "aliases"]
    assert len(lines) == 2 and "@challenger from 2026-11-02" in lines[1]
    out = runner.invoke(app, wh + ["models", "promote", "mmoe-000000000000", "--alias", "champion"])
    assert out.exit_code == 1
    assert out.stderr.strip().splitlines()[-1].startswith("error: unknown model version")


def test_every_model_reference_names_one_version(job_config, artifacts, tmp_path):
    """A directory, a version and @alias are parsed once (ModelRef) and name the version
    their own files record; compare and evaluate resolve them through version_of."""
    from jobs.core.errors import MissingInputError
    from jobs.core.modelref import ModelRef
    from jobs.core.registry import version_of

    first, second = artifacts
    v1 = register_model(job_config, first, alias="champion", effective="2026-11-01").version
    v2 = _version(second)  # never registered: its predictions may still be compared
    assert ModelRef.parse(str(first)) == ModelRef("directory", str(first))
    assert ModelRef.parse("@champion") == ModelRef("alias", "champion")
    assert ModelRef.parse(v2) == ModelRef("version", v2)
    assert version_of(job_config, "synth", "2026-11-03", "@champion") == v1
    assert version_of(job_config, "synth", "2026-11-03", str(second)) == v2
    assert version_of(job_config, "synth", "2026-11-03", v2) == v2
    with pytest.raises(RegistryError, match="has no promotion in force on 2026-10-31"):
        version_of(job_config, "synth", "2026-10-31", "@champion")  # before it took effect
    with pytest.raises(MissingInputError, match="is not an artifact directory"):
        ModelRef.parse(tmp_path / "nowhere")
    with pytest.raises(MissingInputError, match="neither an artifact directory"):
        ModelRef.parse("../escape")
