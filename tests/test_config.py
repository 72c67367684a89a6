"""The job config: one set of training defaults (the model library's), unknown keys refused."""

from __future__ import annotations

import pytest

from jobs.core.config import TableMapping, load_config
from jobs.core.errors import ConfigError
from mmoe_model.config import ModelConfig, TrainConfig


def test_training_defaults_are_the_model_librarys(tmp_path):
    cfg = load_config(warehouse=tmp_path)
    assert cfg.training.model_config("mmoe") == ModelConfig(arch="mmoe")
    assert cfg.training.train_config(seed=3) == TrainConfig(seed=3)
    assert cfg.training.train_config(epochs=5).epochs == 5


def test_training_keys_reach_the_model_and_optimiser(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training: {num_experts: 3, gate_temperature: 0.5, epochs: 4, "
                    "weight_decay: 0.001, expert_hidden: [7, 5]}\n")
    training = load_config(path).training
    model = training.model_config("ple")
    assert (model.arch, model.num_experts, model.gate_temperature, model.expert_hidden) == \
        ("ple", 3, 0.5, (7, 5))
    assert model.expert_dim == ModelConfig().expert_dim  # left out: the library default
    assert (training.train_config().epochs, training.train_config().weight_decay) == (4, 0.001)


@pytest.mark.parametrize("body, message", [
    ("training: {num_expert: 3}", r"config.training: unknown key\(s\) \['num_expert'\]"),
    ("training: {seed: 3}", r"unknown key\(s\) \['seed'\]"),
    ("training: {epochs: '8'}", r"config.training.epochs: must be a number"),
    ("training: {num_experts: 0}", r"config.training: num_experts must be >= 1"),
    ("training: [1, 2]", r"config.training: must be a mapping"),
    # tables: (issue 18)
    ("tables: {synth: {nosuch: db.t}}", r"config.tables.synth.nosuch: unknown table"),
    ("tables: {synth: {features: 'db.t; DROP TABLE x'}}", r"is not a catalog table name"),
    ("tables: {synth: {labels: {name: db.l, partition_type: timestamp}}}",
     r"config.tables.synth.labels.partition_type: must be one of 'string', 'date'"),
    ("tables: {synth: {labels: {name: db.l, partition_column: 'a b'}}}", r"is not a column name"),
    ("tables: {synth: {labels: {table: db.l}}}", r"must be a table name or a mapping with name"),
    ("tables: [db.t]", r"config.tables: must be a mapping"),
    # compare: slices and gates (issue 32)
    ("compare: {segments: [[platform, platform]]}", r"compare.segments\[0\]: a slice needs distinct"),
    ("compare: {segments: [3]}", r"compare.segments\[0\]: a slice is a column name or a list"),
    ("compare: {min_slice_rows: -1}", r"min_slice_rows and compare.min_slice_requests must be >= 0"),
    ("compare: {gates: [{task: click, metric: auc}]}", r"compare.gates\[0\]: exactly one of"),
    ("compare: {gates: [{task: click, metric: nosuch, min: 1}]}", r"is not a compared metric"),
])
def test_bad_config_sections_are_refused(refused_config, body, message):
    refused_config(body, message)


def test_tables_config_maps_names_and_partition_columns(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tables:\n  synth:\n    features: db.f\n"
                    "    labels: {name: db.l, partition_column: day, partition_type: date}\n")
    assert load_config(path).tables == {"synth": {
        "features": TableMapping("db.f"), "labels": TableMapping("db.l", "day", "date")}}


def test_gate_and_expert_layout_are_training_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training: {gate: topk, gate_k: 3, num_experts: 4, "
                    "expert_layout: ['2xmlp:16@age', '2xcross:2']}\n")
    model = load_config(path).training.model_config("mmoe")
    assert (model.gate, model.gate_k, model.expert_layout) == \
        ("topk", 3, ("2xmlp:16@age", "2xcross:2"))
    path.write_text("training: {gate: argmax}\n")
    with pytest.raises(ConfigError, match="gate must be one of"):
        load_config(path)


def test_compare_slices_cross_columns_however_written(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("compare:\n  segments: [platform, [platform, user_cohort], 'platform, user_cohort',"
                    " 'user_cohort & platform']\n  gates:\n"
                    "    - {task: click, metric: ndcg@10, segment: platform=ios, max_regression: 0.002}\n")
    c = load_config(path).compare
    assert c.segments == ["platform", "platform & user_cohort", "platform & user_cohort",
                          "user_cohort & platform"]
    (gate,) = c.gate_list()
    assert (gate.task, gate.metric, gate.segment, gate.kind, gate.threshold) == \
        ("click", "ndcg@10", "platform=ios", "max_regression", 0.002)
