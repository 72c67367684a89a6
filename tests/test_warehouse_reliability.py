"""`jobs.core.warehouse.replacing` under concurrency and crashes, without Spark: two writers of one
target are serialised (neither's recovery deletes the other's staging), a killed holder's lock
is released by the kernel, an interrupted swap is undone, a removal is never undone."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _reliability import REPO, cli_env, wait_for

from jobs.core.warehouse import recover, remove, replacing


def _write(staging: Path, name: str, text: str) -> None:
    staging.mkdir(parents=True, exist_ok=True)
    (staging / name).write_text(text)


def _paused_child(code: str, target: Path, point: str, markers: Path, **env) -> subprocess.Popen:
    """A child process running ``code`` on ``target``, left at pause point ``point`` (see
    jobs/core/warehouse.py's test hook); killed if it never gets there."""
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], cwd=REPO,
                            env=cli_env(MMOE_TEST_PAUSE_AT=point, MMOE_TEST_PAUSE_DIR=str(markers),
                                        **env))
    try:
        wait_for(markers / point, proc, timeout=60)
    except BaseException:
        proc.kill()
        proc.wait(30)
        raise
    return proc


def _flock_waiters(lock: Path) -> int:
    """How many flock requests the kernel has queued behind the holder of ``lock`` (the
    ``->`` lines of /proc/locks on its device and inode): a waiter seen blocked, not guessed."""
    try:
        st = lock.stat()
    except FileNotFoundError:
        return 0
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return sum(1 for line in Path("/proc/locks").read_text().splitlines()
               if "->" in line and " FLOCK " in line and where in line.split())


def _until(condition, timeout: float = 60) -> bool:
    """Poll ``condition`` (every millisecond) until it holds or ``timeout`` passes; whether it
    held. For conditions the test cannot be told about, with a bound no machine reaches."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def _killed_at(code: str, target: Path, point: str, markers: Path) -> None:
    """``kill -9`` of a child at pause point ``point``."""
    proc = _paused_child(code, target, point, markers)
    proc.kill()
    proc.wait(30)


def test_concurrent_replacing_of_one_target_is_serialised(tmp_path):
    target = tmp_path / "table" / "ds=2026-01-01"
    a_inside, a_release, b_inside = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def writer_a():
        try:
            with replacing(target) as staging:
                _write(staging, "part-a.parquet", "a")
                a_inside.set()
                a_release.wait(30)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def writer_b():
        try:
            with replacing(target) as staging:
                b_inside.set()
                _write(staging, "part-b.parquet", "b")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    a = threading.Thread(target=writer_a)
    a.start()
    assert a_inside.wait(30)
    b = threading.Thread(target=writer_b)
    b.start()
    # B is queued by the kernel behind A's flock (or, wrongly, already inside)
    lock = target.parent / f".lock-{target.name}"
    assert _until(lambda: _flock_waiters(lock) == 1 or b_inside.is_set())
    assert not b_inside.is_set()  # B waits for A's lock: its recovery cannot touch A's staging
    a_release.set()
    a.join(30)
    b.join(30)
    assert not errors
    assert sorted(p.name for p in target.iterdir()) == ["part-b.parquet"]  # the last one, whole
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".")] == []


def test_a_killed_holder_releases_the_lock(tmp_path):
    target = tmp_path / "t"
    code = ("import sys; from pathlib import Path; from jobs.core.warehouse import replacing\n"
            "with replacing(Path(sys.argv[1])) as s:\n"
            "    s.mkdir(); (s / 'part-0.parquet').write_text('x')\n")
    markers = tmp_path / "markers"
    _killed_at(code, target, "staged", markers)
    done = threading.Event()

    def writer():
        with replacing(target) as staging:
            _write(staging, "part-1.parquet", "y")
        done.set()

    threading.Thread(target=writer, daemon=True).start()
    assert done.wait(10), "the lock of a killed process was not released"
    assert sorted(p.name for p in target.iterdir()) == ["part-1.parquet"]
    assert not list(tmp_path.glob(".staging-*"))  # the killed run's staging was cleaned up
    assert not list(tmp_path.glob(".lock-*"))  # and its lock file


@pytest.mark.parametrize("point", ["swapping", "renaming"])
def test_a_kill_between_the_renames_keeps_the_old_copy_whole(tmp_path, point):
    """Killed after the old copy is renamed away (``swapping``) or just before the new one is
    renamed in (``renaming``): the old copy must still exist, whole, beside the target, so the
    next holder puts it back; a reader then sees the old content, never nothing or a mix."""
    target = tmp_path / "t"
    target.mkdir()
    _write(target, "part-0.parquet", "old")
    code = ("import sys; from pathlib import Path; from jobs.core.warehouse import replacing\n"
            "with replacing(Path(sys.argv[1])) as s:\n"
            "    s.mkdir(); (s / 'part-1.parquet').write_text('new')\n")
    markers = tmp_path / "markers"
    _killed_at(code, target, point, markers)
    assert not target.exists()                     # between the renames
    olds = list(tmp_path.glob(".old-t-*"))
    assert [sorted((p.name, p.read_text()) for p in o.iterdir()) for o in olds] == \
        [[("part-0.parquet", "old")]], olds
    recover(target)                                # what the next holder does first
    assert sorted((p.name, p.read_text()) for p in target.iterdir()) == [("part-0.parquet", "old")]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith((".old-", ".staging-"))] == []


def test_many_writers_never_overlap(tmp_path):
    """Eight threads replacing one target: at most one inside at any time (the lock file is
    deleted and re-created between holders), and the target ends whole. Each holder stays in
    until the kernel shows another writer blocked on its flock (or every other writer is done),
    so every hold overlaps live contention, whatever the machine's speed."""
    target = tmp_path / "t"
    inside, overlaps, finished, lock = [0], [0], [0], threading.Lock()
    flock_file = target.parent / f".lock-{target.name}"

    def writer(i):
        try:
            for _ in range(5):
                with replacing(target) as staging:
                    with lock:
                        inside[0] += 1
                        overlaps[0] += inside[0] > 1
                    _write(staging, "part-0.parquet", str(i))
                    _until(lambda: _flock_waiters(flock_file) > 0 or finished[0] == 7
                           or overlaps[0] > 0)
                    with lock:
                        inside[0] -= 1
        finally:
            with lock:
                finished[0] += 1

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert overlaps[0] == 0
    assert [p.name for p in target.iterdir()] == ["part-0.parquet"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_interrupted_swap_is_undone_before_anything_else(tmp_path):
    target = tmp_path / "t"
    old = tmp_path / f".old-{target.name}-abc"  # a crash between the two renames
    _write(old, "part-0.parquet", "previous")
    with pytest.raises(RuntimeError):
        with replacing(target) as staging:
            _write(staging, "part-0.parquet", "half")
            raise RuntimeError("the new run fails too")
    assert (target / "part-0.parquet").read_text() == "previous"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".old-", ".staging-"))]


def test_a_removal_is_never_undone(tmp_path):
    target = tmp_path / "t"
    _write(target, "part-0.parquet", "stale")
    remove(target)
    assert not target.exists()
    doomed = tmp_path / f".removed-{target.name}-abc"  # as if the process died mid-rmtree
    _write(doomed, "part-0.parquet", "stale")
    recover(target)
    assert not target.exists() and not doomed.exists()


def test_a_kill_before_the_rename_keeps_the_old_file_whole(tmp_path):
    """write_bytes (exported models, manifests, registry state): killed with the new bytes
    written but not yet renamed in, the target still holds the old bytes, whole; a rerun puts
    the new ones in. Written in place, the target would already have changed (or be torn)."""
    target = tmp_path / "model.onnx"
    old, new = b"old" * 1000, b"new" * 300_000
    target.write_bytes(old)
    code = ("import sys; from pathlib import Path; from jobs.core.warehouse import write_bytes\n"
            "write_bytes(Path(sys.argv[1]), b'new' * 300_000)\n")
    markers = tmp_path / "markers"
    _killed_at(code, target, "file_written", markers)
    assert target.read_bytes() == old
    temps = [p for p in tmp_path.iterdir() if p.name.startswith(".model.onnx.")]
    assert [p.read_bytes() == new for p in temps] == [True]   # the new bytes went elsewhere
    subprocess.run([sys.executable, "-c", code, str(target)], cwd=REPO, env=cli_env(), check=True,
                   timeout=60)
    assert target.read_bytes() == new


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to watch the system calls")
def test_a_history_line_is_fsynced_on_its_own_descriptor(tmp_path):
    """append_json_line (the registry's history, the run records): the line's write is followed
    by an fsync of the same descriptor before it is closed, watched with strace in a child (a
    page-cache-only line is lost with the machine, whatever the process does)."""
    history = tmp_path / "history.jsonl"
    trace = tmp_path / "trace.txt"
    code = ("import sys; from jobs.core.warehouse import append_json_line\n"
            "append_json_line(sys.argv[1], {'version': 'v1'})\n")
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=openat,write,fsync,fdatasync,close", "-o",
                    str(trace), sys.executable, "-c", code, str(history)], cwd=REPO, env=cli_env(),
                   check=True, timeout=120)
    assert history.read_text() == '{"version": "v1"}\n'
    calls = [line.split(None, 1)[1] for line in trace.read_text().splitlines()]
    opened = [c for c in calls if c.startswith("openat(") and str(history) in c]
    assert len(opened) == 1, opened
    fd = opened[0].rsplit("=", 1)[1].strip()
    after = calls[calls.index(opened[0]) + 1:]
    on_fd = [c.split("(", 1)[0] for c in after if c.startswith((f"write({fd},", f"fsync({fd})",
                                                                f"fdatasync({fd})", f"close({fd})"))]
    assert on_fd[:3] in (["write", "fsync", "close"], ["write", "fdatasync", "close"]), on_fd


def test_a_sigterm_during_the_swap_waits_for_both_renames(tmp_path):
    """SIGTERM while replacing() has the old copy renamed away (paused there for 2 s): the
    signal is held until the new copy is in, then the job stops (JobStopped). The target is
    the new content, whole; a reader never finds it missing or half swapped."""
    target = tmp_path / "t"
    target.mkdir()
    _write(target, "part-0.parquet", "old")
    code = ("import sys; from pathlib import Path\n"
            "from jobs.core import signals\n"
            "from jobs.core.errors import JobStopped\n"
            "from jobs.core.warehouse import replacing\n"
            "try:\n"
            "    with signals.stop_on_signals():\n"
            "        with replacing(Path(sys.argv[1])) as s:\n"
            "            s.mkdir(); (s / 'part-1.parquet').write_text('new')\n"
            "except JobStopped:\n"
            "    sys.exit(7)\n")
    markers = tmp_path / "markers"
    proc = _paused_child(code, target, "swapping", markers, MMOE_TEST_PAUSE_SECONDS="2")
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 7      # stopped by the signal, after the block
    finally:
        proc.kill()
        proc.wait(30)
    assert sorted((p.name, p.read_text()) for p in target.iterdir()) == [("part-1.parquet", "new")]
    recover(target)
    assert sorted((p.name, p.read_text()) for p in target.iterdir()) == [("part-1.parquet", "new")]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith((".old-", ".staging-"))] == []
