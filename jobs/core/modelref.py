"""What ``--model`` (and compare's ``--baseline`` / ``--candidate``, evaluate's
``--model-version``) names: an artifact directory, a registered version, or ``@alias``.

Parsed once, at the edge (the CLI, the DAG runner, library callers), into a :class:`ModelRef`;
the registry resolves it for a ds (:func:`jobs.core.registry.resolve_model`). This is the only
place that decides "is it a directory?". Torch- and Spark-free, so the CLI checks it before the
JVM starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from jobs.core.errors import InputError, MissingInputError
from jobs.core.warehouse import local_path, safe_name

_URI_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")

Kind = Literal["directory", "version", "alias"]


@dataclass(frozen=True)
class ModelRef:
    kind: Kind
    value: str          # the directory's path, the version, or the alias name (without "@")
    # the option it was given as (--model, --baseline, ...): every error about it names that
    option: str = field(default="--model", compare=False)

    @classmethod
    def parse(cls, model: "ModelRef | Path | str", what: str = "--model") -> "ModelRef":
        """``@name`` is an alias; an existing directory (or any ``Path``) is a directory; any
        other text is a registered version. A text that can be none of these is refused."""
        if isinstance(model, ModelRef):
            return model
        if isinstance(model, Path):
            return cls.directory(local_path(model, what), what)
        text = str(model)
        if _URI_LIKE.match(text):  # file:///dir is the directory; other schemes are refused
            text = str(local_path(text, what))
        if text.startswith("@"):
            return cls("alias", safe_name(text[1:], f"{what} alias"), what)
        if Path(text).is_dir():
            return cls("directory", text, what)
        try:
            return cls("version", safe_name(text, what), what)
        except InputError:
            raise MissingInputError(
                f"{what} {text} is neither an artifact directory, nor @alias, nor a registered "
                f"version") from None

    @classmethod
    def directory(cls, path: Path | str, what: str = "--model") -> "ModelRef":
        if not Path(path).is_dir():
            raise MissingInputError(f"{what} {path} is not an artifact directory")
        return cls("directory", str(path), what)

    @property
    def path(self) -> Path:
        if self.kind != "directory":
            raise TypeError(f"{self} is not a directory reference")
        return Path(self.value)

    def __str__(self) -> str:
        return f"@{self.value}" if self.kind == "alias" else self.value


def parse_models(models: "ModelRef | Path | str | list", what: str = "--model") -> list[ModelRef]:
    """One reference or several (backfill's repeated ``--model``), parsed; none, or the same
    reference twice, is refused."""
    values = [models] if isinstance(models, (ModelRef, Path, str)) else list(models)
    refs = [ModelRef.parse(m, what) for m in values]
    if not refs:
        raise InputError(f"{what}: at least one model is needed")
    names = [str(r) for r in refs]
    repeated = next((n for n in names if names.count(n) > 1), None)
    if repeated is not None:
        raise InputError(f"{what} {repeated} is given more than once")
    return refs
