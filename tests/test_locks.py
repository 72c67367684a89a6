"""Partition locks: one writer at a time, a bounded wait then a one-line refusal naming the
holder, stale locks of dead processes broken by exactly one breaker."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from _reliability import run_concurrently

from jobs.core.errors import PartitionLocked
from jobs.core.locks import _UNREADABLE_LOCK_GRACE_S as GRACE
from jobs.core.locks import _break_stale, _read_holder, _try_create, partition_lock
from jobs.core.warehouse import Warehouse


def _on_refusal(callback):
    """A ``sys.setprofile`` hook for the thread that installs it: ``callback()`` each time
    partition_lock's O_EXCL create is refused (the lock file exists: someone holds it). It only
    watches the real code, so a test knows a waiter has really tried, without sleeping."""
    code = _try_create.__code__

    def hook(frame, event, arg):
        if event == "return" and frame.f_code is code and arg is False:
            callback()

    return hook


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: os.kill(pid, 0) now fails
    return proc.pid


def _plant(path, pid: int, host: str | None = None, token: str = "planted") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                "started_at": "2026-11-05T03:00:00+00:00",
                                "command": "mmoe backfill --dataset synth", "token": token}))


def test_lock_path_per_dataset_table_ds_and_version(tmp_path):
    wh = Warehouse(tmp_path)
    assert wh.lock_path("synth", "predictions", "2026-11-05", "mmoe-abc") == (
        tmp_path / "synth" / "_locks" / "predictions.ds=2026-11-05.model_version=mmoe-abc.lock")
    assert wh.lock_path("synth", "metrics", "2026-11-05").name == "metrics.ds=2026-11-05.lock"


def test_a_held_lock_makes_the_second_writer_wait_then_refuse_naming_the_holder(tmp_path):
    wh = Warehouse(tmp_path)
    path = wh.lock_path("synth", "predictions", "2026-11-05", "mmoe-abc")
    _plant(path, os.getpid())  # a live holder: this very process
    started = time.monotonic()
    with pytest.raises(PartitionLocked) as err:
        with wh.lock("synth", "predictions", "2026-11-05", "mmoe-abc", wait_seconds=0.6,
                     poll_seconds=0.1):
            pytest.fail("acquired a lock another live process holds")
    waited = time.monotonic() - started
    # at least the configured wait (exact: the deadline is monotonic); the upper bound only
    # says it did not wait for ever, generous for a loaded 2-core machine
    assert 0.6 <= waited < 60
    message = str(err.value)
    assert "\n" not in message
    assert f"pid {os.getpid()} on {socket.gethostname()}" in message
    assert "mmoe backfill --dataset synth" in message and "waited 0.6s" in message
    assert path.exists()  # the holder's lock is untouched


def test_the_waiter_gets_the_lock_once_the_holder_releases(tmp_path):
    """The holder keeps the lock until the waiter has been refused at least once (seen by a
    profile hook on the real create, not by sleeping), then releases it: the waiter gets in
    after the release, never while it is held."""
    path = tmp_path / "_locks" / "x.lock"
    order = []
    tried = threading.Event()  # the waiter was refused once (or, wrongly, got in)

    def waiter():
        sys.setprofile(_on_refusal(tried.set))
        try:
            with partition_lock(path, "x", wait_seconds=60, poll_seconds=0.01):
                order.append("waiter in")
                tried.set()
        finally:
            sys.setprofile(None)

    thread = threading.Thread(target=waiter)
    with partition_lock(path, "x"):
        thread.start()
        assert tried.wait(60), "the waiter never tried the lock"
        order.append("holder done")
    thread.join(60)
    assert order == ["holder done", "waiter in"]
    assert not path.exists()  # released


def test_a_dead_holders_lock_is_broken(tmp_path):
    path = tmp_path / "_locks" / "x.lock"
    _plant(path, _dead_pid())
    with partition_lock(path, "x", wait_seconds=0) as me:
        assert json.loads(path.read_text())["token"] == me.token
    assert not path.exists()


def test_another_hosts_lock_is_never_broken(tmp_path):
    path = tmp_path / "_locks" / "x.lock"
    _plant(path, _dead_pid(), host="some-other-host")
    with pytest.raises(PartitionLocked, match="on some-other-host"):
        with partition_lock(path, "x", wait_seconds=0.2, poll_seconds=0.05):
            pass


def test_racing_breakers_of_a_stale_lock_never_hold_it_together(tmp_path):
    """Many threads find the same stale lock at once: each gets the lock in turn, never two at
    a time (a breaker that removed a fresh lock would let two in). Each holder stays in until
    another writer has been refused since it entered (or every other writer is done), so every
    hold overlaps live contention, whatever the machine's speed."""
    path = tmp_path / "_locks" / "x.lock"
    threads = 8
    for _ in range(5):
        _plant(path, _dead_pid())
        inside, most, refusals, done = [0], [0], [0], [0]
        cond = threading.Condition()
        start = threading.Barrier(threads)

        def refused():
            with cond:
                refusals[0] += 1
                cond.notify_all()

        def writer():
            sys.setprofile(_on_refusal(refused))
            try:
                start.wait()
                with partition_lock(path, "x", wait_seconds=60, poll_seconds=0.005):
                    with cond:
                        inside[0] += 1
                        most[0] = max(most[0], inside[0])
                        seen = refusals[0]
                        cond.wait_for(lambda: refusals[0] > seen or done[0] == threads - 1
                                      or most[0] > 1, 60)  # (an overlap: fail at once)
                        inside[0] -= 1
            finally:
                sys.setprofile(None)
                with cond:
                    done[0] += 1
                    cond.notify_all()

        assert run_concurrently(writer, threads) == [] and most[0] == 1
        assert not path.exists()
        assert not list(path.parent.glob(".broken-*"))


def test_locks_config_is_read_and_checked(tmp_path):
    from jobs.core.config import load_config
    from jobs.core.errors import ConfigError

    config = tmp_path / "c.yaml"
    config.write_text("locks: {wait_seconds: 7}\n")
    assert load_config(config).locks.wait_seconds == 7
    config.write_text("locks: {wait_seconds: -1}\n")
    with pytest.raises(ConfigError, match="locks.wait_seconds"):
        load_config(config)


def test_a_just_created_lock_file_is_never_broken_and_an_old_unreadable_one_is(tmp_path):
    """A lock file its creator has not written yet (empty: between O_EXCL create and write) is
    live for the grace period, however often a second writer looks; aged past it with os.utime
    (its creator died in between), the second writer breaks it. No race: ages are set."""
    path = tmp_path / "_locks" / "x.lock"
    path.parent.mkdir(parents=True)
    path.write_text("")
    for age in (0.0, GRACE - 2.0):                      # just created, and nearly old
        now = time.time()
        os.utime(path, (now - age, now - age))
        with pytest.raises(PartitionLocked, match="still writing the lock file"):
            with partition_lock(path, "x", wait_seconds=0.2, poll_seconds=0.02):
                pytest.fail("broke a lock that was just created")
        assert path.exists() and path.read_text() == ""
    now = time.time()
    os.utime(path, (now - GRACE - 2.0, now - GRACE - 2.0))   # its creator is long gone
    with partition_lock(path, "x", wait_seconds=0) as me:
        assert json.loads(path.read_text())["token"] == me.token
    assert not path.exists()


def test_a_breaker_never_removes_a_lock_taken_since_it_looked(tmp_path):
    """The breaker re-reads under its guard: a stale lock replaced meanwhile by a fresh one
    (another token, a live holder, or a just-created empty file) is left alone."""
    path = tmp_path / "_locks" / "x.lock"
    _plant(path, _dead_pid(), token="stale")
    seen = _read_holder(path)
    _plant(path, os.getpid(), token="fresh")            # taken in between by a live writer
    _break_stale(path, seen)
    assert json.loads(path.read_text())["token"] == "fresh"
    path.write_text("")                                  # a writer between create and write
    _break_stale(path, seen)
    _break_stale(path, None)
    assert path.exists() and path.read_text() == ""
    assert not list(path.parent.glob(".broken-*")) and not list(path.parent.glob("*.break"))
