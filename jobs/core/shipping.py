"""The project's code as one zip: what a cluster that has only the dependencies needs from us.

Spark Connect sessions add it as a pyfile artifact (``jobs.core.spark``), spark-submit gets it
through ``--py-files`` (the Airflow SparkSubmit mode, the standalone-cluster test). The zip holds
the project's packages (code, specs, the default config, the log4j file) from wherever this
process imports them, so the executors run exactly the client's code.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

import jobs

PACKAGES = ("jobs", "mmoe_model", "schemas")
SUFFIXES = (".py", ".yaml", ".properties")
PROJECT_ROOT = Path(jobs.__file__).resolve().parents[1]


def project_files(root: Path = PROJECT_ROOT) -> list[Path]:
    return [path for package in PACKAGES for path in sorted((root / package).rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts and path.suffix in SUFFIXES]


def write_project_zip(out: Path, root: Path = PROJECT_ROOT) -> Path:
    """The packages under ``root`` as ``out`` (entries named ``jobs/...``, importable from the
    zip as Python's zipimport needs); fixed timestamps, so the same code gives the same bytes."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in project_files(root):
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return out


def code_digest(root: Path = PROJECT_ROOT) -> str:
    digest = hashlib.sha256()
    for path in project_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def project_zip(root: Path = PROJECT_ROOT) -> Path:
    """The zip of the code this process runs, built once per code version in the temp dir
    (``mmoe_code_<digest>.zip``: the name changes with the code, so a session never mixes two)."""
    out = Path(tempfile.gettempdir()) / f"mmoe-code-{os.getuid()}" / f"mmoe_code_{code_digest(root)}.zip"
    if not out.exists():
        partial = out.with_suffix(f".{os.getpid()}.tmp")
        write_project_zip(partial, root)
        os.replace(partial, out)
    return out
