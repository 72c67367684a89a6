"""What a scoring worker does to its own process when it builds the model
(jobs.runtime.worker.worker_artifact), each checked in a fresh interpreter:

- it keeps the memory of its batches (``keep_freed_memory``): with glibc's defaults every
  batch's large tensors are unmapped when freed and the next batch faults each page in again.
  Oracle: the kernel's count of minor page faults (getrusage) while the same model scores the
  same batches, once through the worker's model cache and once through a plain artifact load;
- it takes what is alive then out of the cyclic collector's generations (``gc.freeze``), so
  the full ``gc.collect()`` Spark's worker runs after every task does not walk the libraries
  and the model again. Oracle: the collector's own list of the objects it tracks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tiny_models import tiny_model

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


FREEZE_SCRIPT = r"""
import gc, json, sys
from mmoe_model.artifact import ModelArtifact, read_artifact_files
from jobs.runtime.worker import worker_artifact

files = read_artifact_files(sys.argv[1])
if sys.argv[2] == "worker":
    artifact = worker_artifact(files, "sha-of-the-test")
else:
    artifact = ModelArtifact.from_files(files)
tracked = {id(o) for o in gc.get_objects()}  # generations 0-2: what a collection walks
print(json.dumps({"model_walked": id(artifact.model) in tracked,
                  "spec_walked": id(artifact.spec) in tracked,
                  "frozen": gc.get_freeze_count(), "walked": len(tracked)}))
"""


@pytest.fixture(scope="module")
def reference_sized_model(tmp_path_factory):
    """The library's default MMoE (the bench's reference size): its batches allocate blocks
    large enough for glibc to unmap."""
    from mmoe_model.models import ModelConfig

    return tiny_model(tmp_path_factory.mktemp("memory") / "model", seed=0,
                      config=ModelConfig(arch="mmoe"))


def _fresh_interpreter(script: str, model_dir, how: str):
    """What ``script`` prints last (JSON), run in a new Python with the model and ``how``
    ("worker": through the worker's model cache; "plain": a plain artifact load)."""
    done = subprocess.run([sys.executable, "-c", script, str(model_dir), how],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _faults(model_dir, how: str) -> int:
    """Minor page faults while ``BATCHES`` 8192-row batches are scored (after two warm-ups)."""
    return _fresh_interpreter(SCRIPT, model_dir, how)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_the_worker_does_not_fault_its_batches_memory_in_again(reference_sized_model):
    # the control, up to 3 fresh interpreters: glibc sometimes settles early (a clean-clone run
    # saw 5,960 once); the worker's own figure is measured once and never retried
    plain = 0
    for _ in range(3):
        plain = max(plain, _faults(reference_sized_model, "plain"))
        if plain > 20_000:
            break
    worker = _faults(reference_sized_model, "worker")
    # Measured (12 runs of each): glibc's defaults fault 2,000-6,000 pages in for most batches
    # (30-83k in all; it sometimes settles after a few batches); the worker's setting none in
    # most batches, 0-3,700 in all (the heap growing to a new high-water mark now and then).
    # The control shows the test can tell them apart.
    assert plain > 20_000, f"control: {plain} faults in {BATCHES} batches"
    assert worker < 8_000, f"worker: {worker} faults in {BATCHES} batches (plain: {plain})"


def test_the_worker_keeps_its_model_and_libraries_out_of_every_collection(reference_sized_model):
    plain, worker = (_fresh_interpreter(FREEZE_SCRIPT, reference_sized_model, how)
                     for how in ("plain", "worker"))
    assert plain["model_walked"] and plain["spec_walked"] and plain["frozen"] == 0  # control
    assert not worker["model_walked"] and not worker["spec_walked"]
    # what a collection walks afterwards: a few objects, not the libraries' ~10^5
    assert worker["frozen"] > 50_000 and worker["walked"] < plain["walked"] / 50, worker
