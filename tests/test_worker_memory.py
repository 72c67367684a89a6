"""A scoring worker keeps the memory of its batches (jobs.runtime.worker.keep_freed_memory):
with glibc's defaults every batch's large tensors are unmapped when freed and the next batch
faults each page in again. Oracle: the kernel's count of minor page faults (getrusage) while
the same model scores the same batches, in a fresh interpreter per case, once through the
worker's model cache and once through a plain artifact load."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


BATCHES = 16
SCRIPT = f"BATCHES = {BATCHES}\n" + r"""
import json, resource, sys
import pyarrow as pa
import torch
from mmoe_model.artifact import ModelArtifact, read_artifact_files
from mmoe_model.sample import sample_frame
from jobs.runtime.worker import worker_artifact

files = read_artifact_files(sys.argv[1])
if sys.argv[2] == "worker":
    artifact = worker_artifact(files, "sha-of-the-test")  # what every scoring task calls
else:
    artifact = ModelArtifact.from_files(files)
torch.set_num_threads(1)
frame = pa.Table.from_pandas(sample_frame(artifact.spec, 8192, seed=1), preserve_index=False)
for _ in range(2):
    artifact.predict(frame)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(BATCHES):
    artifact.predict(frame)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


@pytest.fixture(scope="module")
def reference_sized_model(tmp_path_factory):
    """The library's default MMoE (the bench's reference size): its batches allocate blocks
    large enough for glibc to unmap."""
    import torch

    from mmoe_model.artifact import save_artifact
    from mmoe_model.features import FeatureEncoder, InputLayout
    from mmoe_model.models import ModelConfig, build_model
    from mmoe_model.sample import sample_frame
    from schemas import load_spec

    spec = load_spec("synth")
    torch.manual_seed(0)
    config = ModelConfig(arch="mmoe")
    model = build_model(config, InputLayout.from_spec(spec), len(spec.tasks)).eval()
    encoder = FeatureEncoder.fit(spec, sample_frame(spec, 500, seed=0))
    out = tmp_path_factory.mktemp("memory") / "model"
    save_artifact(out, model, config, spec, encoder, None)
    return out


def _faults(model_dir, how: str) -> int:
    """Minor page faults while ``BATCHES`` 8192-row batches are scored (after two warm-ups)."""
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(model_dir), how],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_the_worker_does_not_fault_its_batches_memory_in_again(reference_sized_model):
    plain = _faults(reference_sized_model, "plain")
    worker = _faults(reference_sized_model, "worker")
    # Measured: glibc's defaults fault 2,000-6,000 pages in for most batches (30-80k in all;
    # it sometimes settles after a few batches); the worker's setting at most a few hundred in
    # all, most batches none. The control shows the test can tell them apart.
    assert plain > 10_000, f"control: {plain} faults in {BATCHES} batches"
    assert worker < 2_000, f"worker: {worker} faults in {BATCHES} batches (plain: {plain})"
