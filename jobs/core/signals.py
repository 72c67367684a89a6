"""A job stopped by SIGTERM or SIGINT ends like any other failure: one error line, a manifest.

:func:`stop_on_signals` (entered by :func:`jobs.core.manifest.run_job` around a job's work)
installs one handler for both signals. On the first signal it cancels the session's Spark jobs
(from a helper thread: the main thread may be waiting inside a JVM call on its own py4j
connection, which the handler then drops so that the clean-up code gets a fresh one) and raises
:class:`~jobs.core.errors.JobStopped` in the main thread. The ``with`` blocks then unwind as for
any error: staging directories are removed, partition and registry locks released, session
settings restored, and ``run_job`` writes the failed manifest. A second signal while that runs
is ignored. Before the error line is printed, :func:`stop_spark` stops the driver JVM quietly
(its log level off), so that no JVM stack trace follows the error line.

:func:`deferred` holds signals back for a few lines that must not be cut in two (the swap of a
partition in ``jobs.core.warehouse.replacing``). Works only in the main thread (Python delivers
signals there); elsewhere the context manager does nothing.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from jobs.core.errors import JobStopped

SIGNALS = (signal.SIGTERM, signal.SIGINT)
CANCEL_WAIT_SECONDS = 5.0
STOP_WAIT_SECONDS = 10.0

_state: dict[str, Any] = {"armed": False, "received": None}


def _handler(signum: int, frame: Any) -> None:
    if _state["received"] is not None or not _state["armed"]:
        _state["received"] = _state["received"] or signum
        return  # already stopping (or finishing): let the clean-up run to its end
    _state["received"] = signum
    _cancel_spark_jobs()
    raise JobStopped(signum, signal.Signals(signum).name)


def received() -> str | None:
    """The name of the signal that stopped the current job, or None."""
    signum = _state["received"]
    return signal.Signals(signum).name if signum is not None else None


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT raise ``JobStopped`` (module docstring); the
    previous handlers are restored when it ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _state.update(armed=True, received=None)
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        _state["armed"] = False
        for s, handler in previous.items():
            signal.signal(s, handler)


def reinstall() -> None:
    """Called after a SparkContext starts: PySpark installs its own SIGINT handler then."""
    if _state["armed"] and threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _handler)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGTERM / SIGINT back until the block ends (then the handler runs)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def _spark_context() -> Any:
    """The running classic SparkContext, without importing pyspark when no job did."""
    if "pyspark" not in sys.modules:
        return None
    return getattr(sys.modules["pyspark"], "SparkContext")._active_spark_context


def _in_thread(work: Callable[[], None], seconds: float) -> None:
    """Run ``work`` in a helper thread (its own py4j connection), waiting at most ``seconds``."""
    def guarded() -> None:
        try:
            work()
        except Exception:  # noqa: BLE001 - the JVM may already be gone (it got the signal too)
            pass

    helper = threading.Thread(target=guarded, daemon=True)
    helper.start()
    helper.join(seconds)


def _cancel_spark_jobs() -> None:
    sc = _spark_context()
    if sc is None:
        return

    def cancel() -> None:
        sc.setLogLevel("OFF")  # the cancelled tasks' errors are this signal's consequence
        sc.cancelAllJobs()

    _in_thread(cancel, CANCEL_WAIT_SECONDS)
    try:  # the main thread's connection is mid-call: drop it, the next call opens a new one
        connection = sc._gateway._gateway_client.get_thread_connection()
        if connection is not None:
            connection.close()
    except Exception:  # noqa: BLE001 - a py4j without per-thread connections: nothing to drop
        pass


def stop_spark() -> None:
    """Stop the driver JVM quietly (after a signal, before the error line is printed)."""
    sc = _spark_context()
    if sc is None:
        return
    proc = getattr(sc._gateway, "proc", None)  # None under spark-submit (the JVM is our parent)

    def stop() -> None:
        sc.setLogLevel("OFF")
        sc.stop()

    _in_thread(stop, STOP_WAIT_SECONDS)
    if proc is None:
        return
    try:  # the gateway JVM exits (its shutdown hooks run, quietly) when its stdin closes
        proc.stdin.close()
        proc.wait(STOP_WAIT_SECONDS)
    except Exception:  # noqa: BLE001 - still there: it must not print after the error line
        proc.kill()
        proc.wait(STOP_WAIT_SECONDS)
