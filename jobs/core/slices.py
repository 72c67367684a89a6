"""Which columns evaluate and compare break their figures down by.

A *segment column* is a features column (``platform``); evaluate reports every metric per value
of each one (segment ``platform=ios``). Compare judges *slices*: a segment column or several
crossed, named by their columns joined with ``SEP`` (``platform & user_cohort``), whose rows are
``platform=ios & user_cohort=new``. A crossed slice is one judged group per value combination,
not a filter: every row falls in exactly one of its values.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from jobs.core.errors import ConfigError, InputError

if TYPE_CHECKING:  # the config validates its slices with slice_name: no import at run time
    from jobs.core.config import JobConfig
    from schemas.spec import DatasetSpec

SEP = " & "                       # between a crossed slice's columns, and its row's values
_SPLIT = re.compile(r"\s*[,&]\s*")  # what a user may write between them: "a,b", "a & b"


def slice_columns(name: str) -> list[str]:
    """The columns of a slice name (one for a plain segment column)."""
    return name.split(SEP)


def slice_name(entry: Any, where: str, error: type = ConfigError) -> str:
    """A slice as the config (a column, a list of columns, ``"a & b"``) or ``--segment``
    (``a,b``) writes it -> its name; two different columns at most is not a rule, one column
    twice is an error."""
    if isinstance(entry, str):
        columns = [c for c in _SPLIT.split(entry.strip()) if c]
    elif isinstance(entry, list) and entry and all(isinstance(c, str) for c in entry):
        columns = [c.strip() for c in entry]
    else:
        raise error(f"{where}: a slice is a column name or a list of column names, got {entry!r}")
    if not columns or len(set(columns)) != len(columns):
        raise error(f"{where}: a slice needs distinct column names, got {entry!r}")
    return SEP.join(columns)


def in_slice(segment: str, name: str) -> bool:
    """Whether a report row's ``segment`` is one of slice ``name``'s values."""
    parts = segment.split(SEP)
    columns = slice_columns(name)
    return len(parts) == len(columns) and all(p.startswith(c + "=") for p, c in zip(parts, columns))


def slice_values(segment: str, name: str) -> str:
    """``platform=ios & user_cohort=new`` of slice ``platform & user_cohort`` -> ``ios & new``."""
    return SEP.join(p[len(c) + 1:] for p, c in zip(segment.split(SEP), slice_columns(name)))


def _check_columns(spec: "DatasetSpec", names: list[str], source: str, error: type) -> list[str]:
    unknown = [c for n in names for c in slice_columns(n) if c not in spec.features_table_columns]
    if unknown:
        raise error(f"{source} names column(s) {unknown} that the {spec.name} features table does "
                    f"not have")
    return list(dict.fromkeys(names))


def segment_columns(cfg: "JobConfig", spec: "DatasetSpec") -> list[str]:
    """Evaluate's segment columns: ``evaluation.segments``, else the spec's; each must be a
    features column (a :class:`ConfigError` otherwise)."""
    configured = cfg.evaluation.segments if cfg.evaluation.segments is not None else spec.segments
    return _check_columns(spec, list(configured), "evaluation.segments", ConfigError)


def compare_slices(cfg: "JobConfig", spec: "DatasetSpec", requested: list[str] | None = None) -> list[str]:
    """Compare's slices: ``requested`` (``--segment``, ``a,b`` crossing two columns), else
    ``compare.segments``, else evaluate's segment columns. An unknown column is an
    :class:`InputError` for ``--segment`` and a :class:`ConfigError` for the config."""
    if requested:
        names = [slice_name(e, "--segment", InputError) for e in requested]
        return _check_columns(spec, names, "--segment", InputError)
    if cfg.compare.segments is not None:
        names = [slice_name(e, f"compare.segments[{i}]") for i, e in enumerate(cfg.compare.segments)]
        return _check_columns(spec, names, "compare.segments", ConfigError)
    return segment_columns(cfg, spec)
