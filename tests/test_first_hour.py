"""Issue 22, "the first hour": the same training twice gives the same artifact checksum and
registering it again is a no-op that says so; arguments that can be checked without Spark are
refused before the JVM starts, in one plain line."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from typer.testing import CliRunner

from _reliability import REPO, cli_env, job_config_file, last_manifest, write_day
from jobs.cli import app
from jobs.core.warehouse import read_json_lines, Warehouse
from schemas import load_spec

DS = "2026-05-05"
SMALL = {"num_experts": 2, "expert_hidden": [8], "expert_dim": 4, "tower_hidden": [4],
         "batch_size": 128, "epochs": 2}
runner = CliRunner()


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    root = tmp_path_factory.mktemp("first_hour")
    write_day(root / "wh", load_spec("synth"), DS, n=300, seed=5)
    return root


def _cli(root, *args):
    config = job_config_file(root / "config.yaml", training=SMALL)
    return runner.invoke(app, ["--config", str(config), "--warehouse", str(root / "wh"), *args])


def test_the_same_training_twice_gives_the_same_checksum_and_registers_once(day):
    manifests = []
    for out in ("a", "b"):
        result = _cli(day, "train", "--dataset", "synth", "--arch", "mmoe", "--start", DS,
                      "--end", DS, "--out", str(day / out), "--seed", "3")
        assert result.exit_code == 0, result.output
        manifests.append(last_manifest(result.stdout))
    a, b = manifests
    assert a["model_version"] == b["model_version"]
    assert a["model_sha256"] == b["model_sha256"]          # no wall-clock seconds checksummed
    assert (day / "a" / "metrics.json").read_bytes() == (day / "b" / "metrics.json").read_bytes()
    assert len(a["details"]["epoch_seconds"]) == 2         # the seconds stay in the manifest

    first = _cli(day, "models", "register", str(day / "a"), "--alias", "champion",
                 "--effective", DS)
    assert first.exit_code == 0, first.output
    again = _cli(day, "models", "register", str(day / "b"), "--alias", "champion",
                 "--effective", DS)
    assert again.exit_code == 0, again.output
    manifest = last_manifest(again.stdout)
    assert manifest["status"] == "succeeded" and manifest["details"]["events"] == []
    from mmoe_model.artifact import ModelArtifact, build_artifact_files, write_artifact_files

    assert "already registered" in again.stderr and "nothing to do" in again.stderr
    history = read_json_lines(Warehouse(day / "wh").registry_history("synth"))
    assert [e["event"] for e in history] == ["register", "promote"]

    # An artifact of the same version whose metrics.json differs (an older artifact that kept
    # the seconds): the same model, so the registered copy is kept and nothing is recorded.
    artifact = ModelArtifact.load(day / "a")
    files = build_artifact_files(artifact.model, artifact.model_config, artifact.spec,
                                 artifact.encoder, {"note": "other metadata", "seconds": 1.5})
    other = day / "other"
    other.mkdir()
    write_artifact_files(other, files)
    result = _cli(day, "models", "register", str(other))
    assert result.exit_code == 0, result.output
    manifest = last_manifest(result.stdout)
    assert manifest["model_version"] == artifact.model_version
    assert manifest["model_sha256"] == artifact.sha256      # the registered copy's checksum
    assert "nothing to do" in result.stderr
    assert len(read_json_lines(Warehouse(day / "wh").registry_history("synth"))) == 2


# --------------------------------------------------------------------------------------------
# Item 3: A/B intervals at the verdicts' multiplicity


def _bh_rejections(p, alpha):
    """BH by its definition: the largest k with p_(k) <= k alpha / m; reject the k smallest."""
    m, order = len(p), np.argsort(p)
    k = max([i + 1 for i in range(m) if p[order[i]] <= (i + 1) * alpha / m], default=0)
    return k


def _holm_rejections(p, alpha):
    m, order = len(p), np.argsort(p)
    k = 0
    while k < m and p[order[k]] <= alpha / (m - k):
        k += 1
    return k


def _records(delta, se):
    p = 2 * norm.sf(np.abs(delta) / se)
    return pd.DataFrame({"task": "click", "scope": "all", "segment": [f"s{i}" for i in range(len(p))],
                         "metric": "auc", "method": "delong", "baseline_value": 0.7,
                         "candidate_value": 0.7 + delta, "delta": delta, "se": se, "p_value": p,
                         "ci_low": delta - 1.96 * se, "ci_high": delta + 1.96 * se, "n": 100,
                         "payload": None})


@pytest.mark.parametrize("method", ["bh", "holm"])
def test_adjusted_intervals_agree_with_the_verdicts_and_an_independent_oracle(method):
    from jobs.compare.records import finish_report

    rng = np.random.default_rng(11)
    for trial in range(40):
        m = int(rng.integers(2, 60))
        se = rng.uniform(0.001, 0.01, m)
        delta = se * rng.normal(0, 1, m) + se * 4 * (rng.random(m) < 0.3) * rng.choice([-1, 1], m)
        report = finish_report(_records(delta, se), method, 0.05)
        p = report["p_value"].to_numpy()
        # the oracle: rejections by the procedures' definitions, the level from scipy's normal
        if method == "bh":
            r = _bh_rejections(p, 0.05)
            level = np.full(m, max(r, 1) * 0.05 / m)       # Benjamini-Yekutieli (2005)
        else:
            r = _holm_rejections(p, 0.05)
            rank = np.argsort(np.argsort(p)) + 1
            level = np.where(rank <= r, 0.05 / (m - rank + 1), 0.05 / max(m - r, 1))
        z = norm.ppf(1 - level / 2)
        np.testing.assert_allclose(report["ci_low"], delta - z * se, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(report["ci_high"], delta + z * se, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(report["ci_level"], 1 - level, rtol=1e-12)
        # consistent by construction: the row's interval excludes 0 <=> a verdict
        excludes = (report["ci_low"] > 0) | (report["ci_high"] < 0)
        differs = report["verdict"] != "no_difference"
        assert (excludes == differs).all(), (trial, report[excludes != differs])
        assert differs.sum() == r


def test_the_issues_case_raw_interval_excludes_0_adjusted_does_not():
    """Like AUC, delta -0.0055 with raw 95% CI [-0.0101, -0.0008] among many tests: BH says no
    difference, so its adjusted interval must include 0 while the raw one still excludes it."""
    from jobs.compare.records import finish_report

    se = (0.0101 - 0.0008) / (2 * 1.959964)
    delta = np.array([-0.0055] + [0.0] * 11)
    report = finish_report(_records(delta, np.full(12, se)), "bh", 0.05)
    like = report.iloc[0]
    assert like["ci_high_raw"] < 0                               # raw: excludes 0
    assert like["verdict"] == "no_difference" and like["p_value_adjusted"] >= 0.05
    assert like["ci_low"] < 0 < like["ci_high"]                  # the row's interval: includes 0
    assert like["ci_level"] == pytest.approx(1 - 0.05 / 12)


def test_report_shows_both_intervals_says_which_is_which_and_the_guardrail_per_task():
    from types import SimpleNamespace

    from jobs.compare.records import decide, finish_report
    from jobs.compare.report import render_html, render_markdown
    from jobs.core.config import Guardrail

    se = (0.0101 - 0.0008) / (2 * 1.959964)
    report = finish_report(_records(np.array([-0.0055] + [0.0] * 11), np.full(12, se)), "bh", 0.05)
    report["segment"] = ["all"] + list(report["segment"][1:])
    report["task"] = ["like"] + ["click"] * 11
    report["day"] = None
    decision = decide(report, ["auc"], [Guardrail("auc", 0.005)], ["like", "click"])
    assert decision.tasks["like"] == "no_difference" and decision.guardrails_by_task["like"]
    result = SimpleNamespace(report=report, decision=decision, dataset="synth", baseline="a",
                             candidate="b", start=DS, end=DS, segments=[], plots={}, gates=None,
                             pairing=SimpleNamespace(labelled_rows=1, paired_rows=1,
                                                     baseline_only_rows=0, candidate_only_rows=0,
                                                     paired_without_labels=0))
    page = render_html(result)
    assert "adjusted CI (level)" in page and "raw 95% CI" in page
    assert "Benjamini-Yekutieli" in page and "excludes 0 exactly" in page
    per_task = page.split("<h2>Per task</h2>", 1)[1].split("</table>", 1)[0]
    assert "<b>broken</b>: auc regressed by" in per_task
    md = render_markdown(result)
    assert "broken: auc regressed" in md and "adjusted CI" in md


# --------------------------------------------------------------------------------------------
# Item 6: refused before the JVM starts, in one plain line

_DRIVER = r"""
import contextlib, io, json, sys
from jobs.cli import main
out = []
for args in json.loads(sys.argv[1]):
    err, std = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code
    out.append({"code": code, "stderr": err.getvalue(), "stdout": std.getvalue()})
print(json.dumps({"runs": out, "pyspark_imported": "pyspark" in sys.modules}))
"""


def test_arguments_checkable_without_spark_are_refused_before_the_jvm_starts(day):
    from _reliability import tiny_model

    model = str(tiny_model(day / "untrained", load_spec("synth")))
    config = job_config_file(day / "config.yaml", training=SMALL)
    g = ["--config", str(config), "--warehouse", str(day / "wh")]
    empty = "2026-06-01"  # no features partition
    cases = [  # (args, exit code, what the one line says, a manifest follows)
        (["score", "--dataset", "synth", "--ds", DS, "--model", "no/such/dir"], 1,
         "neither an artifact directory", True),
        (["score", "--dataset", "synth", "--ds", DS, "--model", "mmoe-000000000000"], 1,
         "--model mmoe-000000000000: unknown model version 'mmoe-000000000000'", True),
        (["score", "--dataset", "synth", "--ds", DS, "--model", "@nobody"], 1,
         "unknown alias @nobody", True),
        (["score", "--dataset", "synth", "--ds", empty, "--model", model], 1,
         f"no data for synth on {empty}", True),
        (["validate", "--dataset", "synth", "--ds", empty], 1, f"no data for synth on {empty}",
         True),
        (["compare", "--dataset", "synth", "--baseline", model, "--candidate", model,
          "--start", DS, "--end", DS], 2, "are the same version", True),
        (["backfill", "--dataset", "synth", "--start", DS, "--end", DS, "--model", "@nobody"], 1,
         "--model @nobody: unknown alias @nobody", True),
        # each option's error names that option (compare's arms were once called --model)
        (["compare", "--dataset", "synth", "--baseline", model, "--candidate", "@nobody",
          "--start", DS, "--end", DS], 1, "--candidate @nobody: unknown alias @nobody", True),
        (["compare", "--dataset", "synth", "--baseline", "bad name!", "--candidate", model,
          "--start", DS, "--end", DS], 1, "--baseline bad name! is neither", True),
        (["validate", "--dataset", "no-such-spec", "--ds", DS], 1, "no-such-spec", True),
        (["score", "--dataset", "synth", "--dss", DS], 2, "No such option: --dss", False),
        (["score", "--dataset", "synth"], 2, "Missing option '--ds'", False),
    ]
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps([g + c[0] for c in cases])],
                          cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not report["pyspark_imported"], "a refusal started Spark"
    for (args, code, needle, has_manifest), run in zip(cases, report["runs"]):
        lines = run["stderr"].strip().splitlines()
        assert run["code"] == code, (args, run)
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, run["stderr"])
        assert needle in lines[0], (args, lines[0])
        # no class-name prefix ("error: SpecError: ...") and no Typer box
        assert not re.match(r"error: [A-Z]\w*(Error|Exception): ", lines[0]), lines[0]
        assert "unexpected" not in lines[0], lines[0]  # our own errors are not bugs
        assert "│" not in run["stderr"] and "╭" not in run["stderr"]
        if has_manifest:
            manifest = json.loads(run["stdout"].strip().splitlines()[-1])
            assert manifest["status"] == "failed" and manifest["error"] in lines[0]


# --------------------------------------------------------------------------------------------
# Item 4: the demo shows the three uses in about 60 lines


def test_the_demo_shows_the_nightly_day_an_ab_a_backfill_and_the_catalog(tmp_path):
    """The real demo, in-process on the test session, over a small config (2 days of 1,500
    rows, tiny models): every section, at most 60 lines, no manifest on the screen."""
    config = job_config_file(tmp_path / "config.yaml", training={**SMALL, "epochs": 1},
                             demo={"days": 2, "rows_per_day": 1500, "epochs": 1},
                             validation={"keep_data_docs": False},
                             scoring={"batch_size": 512, "catalog": {"max_items_per_user": 20}})
    wh = tmp_path / "wh"
    result = runner.invoke(app, ["--config", str(config), "--warehouse", str(wh), "demo"])
    assert result.exit_code == 0, result.output
    lines = result.output.rstrip("\n").splitlines()
    assert len(lines) <= 60, "\n".join(lines)
    text = result.output
    sections = ["== 0. Data, and two models", "== 1. The nightly day 2026-11-02: validate -> "
                "score @champion -> evaluate", "== 2. Backfill 2026-11-01..2026-11-02, @champion "
                "and @challenger", "== 3. A/B on the held-out day 2026-11-02",
                "== 4. Catalog: top items per user", "== What next"]
    at = [text.find(s) for s in sections]
    assert all(i >= 0 for i in at) and at == sorted(at), list(zip(sections, at))
    assert re.search(r"^   task +count +positives +auc", text, re.M)       # the metrics table
    assert re.search(r"^   ds +model +status", text, re.M)                 # the per-day table
    assert re.search(r"^   compare synth .*: (SHIP|NO SHIP)$", text, re.M)  # the decision
    # the counterfactual section: each model on its own lists, from the logged propensities
    assert re.search(r"^     counterfactual \(doubly robust, each model's own lists\): top_k: click "
                     r"(better|worse|no_difference)", text, re.M)
    assert "4 model-day(s) (2 models)" in text
    assert "A/B report " + str(wh) in text and "report.html" in text
    assert lines[-1].startswith("demo finished in ")
    assert not any(line.lstrip().startswith("{") for line in lines)    # no manifest on screen
    runs = sorted(p.name.split("_")[0] for p in (wh / "synth" / "_runs").glob("*.json"))
    assert runs == sorted(["data-synth", "train", "train", "models-register", "models-register",
                           "validate", "score", "evaluate", "backfill", "compare", "score",
                           "evaluate"])
    # the catalog's top-K evaluated against the held-out day's interactions, in one table
    assert re.search(r"^   task +recall@10 +ndcg@10 +hit_rate@10 +precision@10$", text, re.M)
    assert re.search(r"^   catalog: coverage \d\.\d{3} of the items", text, re.M)
    assert f"run manifest goes to {wh / 'synth' / '_runs'}" in lines[0]
