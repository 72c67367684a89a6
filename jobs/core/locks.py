"""Partition locks: one writer per partition, across processes (:meth:`Warehouse.lock
<jobs.core.warehouse.Warehouse.lock>` names the files).

Locks: ``<wh>/<dataset>/_locks/<table>.ds=D[.model_version=V].lock`` (the registry's own is
``models.lock``), created with ``O_CREAT|O_EXCL`` and holding pid, host, start time, command
and a random token. A writer finding it present polls for up to ``locks.wait_seconds``, then
raises :class:`~jobs.core.errors.PartitionLocked` naming the holder. A lock whose holder runs on this
host and is dead (``os.kill(pid, 0)`` fails) is stale. Breakers take turns through a guard
file (``<lock>.break``); under it the lock is re-read and, only if it is still the same stale
file, renamed to a private name and deleted (see :func:`_break_stale`), so two breakers never
both win and none removes a fresh lock. A lock file still unreadable 10 s after its creation
(its writer died between create and write) is stale too. Locks of other hosts
are never broken automatically (we cannot tell whether their holder lives): delete such a file
by hand after checking. PID reuse on this host can make a dead holder look alive; the waiter
then refuses after ``locks.wait_seconds`` with the holder's details, never writes concurrently.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from jobs.core.errors import PartitionLocked


@dataclass(frozen=True)
class LockHolder:
    pid: int
    host: str
    started_at: str
    command: str
    token: str

    def describe(self) -> str:
        return (f"pid {self.pid} on {self.host} since {self.started_at} "
                f"({self.command[:120] or '?'})")


def _read_holder(path: Path) -> LockHolder | None:
    """The holder recorded in a lock file; None when it is unreadable (being written, or torn)."""
    try:
        raw = json.loads(Path(path).read_text())
        return LockHolder(int(raw["pid"]), str(raw["host"]), str(raw["started_at"]),
                          str(raw.get("command", "")), str(raw["token"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


# A lock file is created empty and then written; one still unreadable after this long belongs
# to a process that died between the two steps.
_UNREADABLE_LOCK_GRACE_S = 10.0


def _is_stale(path: Path, holder: LockHolder | None) -> bool:
    if holder is None:
        try:
            return time.time() - path.stat().st_mtime > _UNREADABLE_LOCK_GRACE_S
        except FileNotFoundError:
            return False
    return holder.host == socket.gethostname() and not _pid_alive(holder.pid)


# Breaking takes milliseconds; a breaker's guard file older than this belongs to a dead breaker.
_BREAK_GUARD_STALE_S = 30.0


def _break_stale(path: Path, seen: LockHolder | None) -> None:
    """Remove the stale lock ``seen`` without ever removing a live one.

    Breakers take turns through a guard file (``<lock>.break``, ``O_CREAT|O_EXCL``). Under it
    the lock is read again: only if it is still the very file judged stale (same token) and
    still stale is it renamed to a private name (one atomic step) and deleted. Nobody else can
    remove or replace that file meanwhile: its holder is dead, creators fail while it exists,
    and other breakers wait for the guard. Without the guard two breakers that read the same
    stale lock could each remove a file, the second one a fresh lock taken in between."""
    guard = path.with_name(path.name + ".break")
    try:
        os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        _drop_dead_guard(guard)
        return  # another breaker is at it: look again on the next poll
    try:
        current = _read_holder(path)
        same = (current.token if current else None) == (seen.token if seen else None)
        if not path.exists() or not same or not _is_stale(path, current):
            return
        private = path.with_name(f".broken-{path.name}-{uuid.uuid4().hex[:12]}")
        os.rename(path, private)
        private.unlink(missing_ok=True)
    finally:
        guard.unlink(missing_ok=True)


def _drop_dead_guard(guard: Path) -> None:
    try:
        if time.time() - guard.stat().st_mtime > _BREAK_GUARD_STALE_S:
            guard.unlink(missing_ok=True)
    except FileNotFoundError:
        pass


def _try_create(path: Path, holder: LockHolder) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, json.dumps(holder.__dict__).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


@contextmanager
def partition_lock(path: Path, what: str, *, wait_seconds: float = 0.0,
                   poll_seconds: float = 0.5) -> Iterator[LockHolder]:
    """Hold the lock file ``path`` for the body: wait up to ``wait_seconds`` while another live
    process holds it, break it when its holder is dead (this host), refuse with
    :class:`PartitionLocked` naming the holder otherwise. Not re-entrant: a process asking for a
    lock it holds waits for itself, so stages never nest the same lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = LockHolder(os.getpid(), socket.gethostname(),
                      dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                      " ".join([Path(sys.argv[0]).name] + sys.argv[1:])[:300] if sys.argv else "",
                      uuid.uuid4().hex)
    deadline = time.monotonic() + wait_seconds
    while not _try_create(path, mine):
        holder = _read_holder(path)
        if _is_stale(path, holder):
            _break_stale(path, holder)
            continue
        if time.monotonic() >= deadline:
            who = holder.describe() if holder else "a process that is still writing the lock file"
            raise PartitionLocked(f"{what} is being written by another job: locked by {who}; "
                                  f"waited {wait_seconds:g}s (locks.wait_seconds), lock file {path}")
        time.sleep(min(poll_seconds, max(deadline - time.monotonic(), 0.01)))
    try:
        yield mine
    finally:
        current = _read_holder(path)
        if current is not None and current.token == mine.token:  # never release someone else's
            path.unlink(missing_ok=True)
