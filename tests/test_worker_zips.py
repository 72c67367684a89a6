"""jobs.runtime.worker.reread_zips_only_when_changed: Spark's worker invalidates the import
caches at every task; a zip on the path is then re-read only when it changed (size or mtime).
Oracle: what is importable, and whether the importer's directory object was rebuilt."""

from __future__ import annotations

import importlib
import os
import sys
import zipfile
import zipimport

import pytest

from jobs.runtime.worker import PYTHON_ZIP_INVALIDATE, reread_zips_only_when_changed


def _zip(path, modules: dict[str, str]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, source in modules.items():
            archive.writestr(f"{name}.py", source)


@pytest.fixture
def zip_on_path(tmp_path, monkeypatch):
    # Python's own method for the test (an earlier test in this process may have installed
    # the stamped one: every in-process scoring does); the current one is restored after
    monkeypatch.setattr(zipimport.zipimporter, "invalidate_caches", PYTHON_ZIP_INVALIDATE)
    archive = tmp_path / "lib.zip"
    _zip(archive, {"mmoe_zip_one": "X = 1\n"})
    monkeypatch.syspath_prepend(str(archive))
    yield archive
    for name in ("mmoe_zip_one", "mmoe_zip_two"):
        sys.modules.pop(name, None)
    sys.path_importer_cache.pop(str(archive), None)


def test_an_unchanged_zip_is_not_reread_and_a_changed_one_is(zip_on_path):
    assert importlib.import_module("mmoe_zip_one").X == 1
    importer = sys.path_importer_cache[str(zip_on_path)]
    reread_zips_only_when_changed()
    reread_zips_only_when_changed()  # installed once: a second call changes nothing
    importlib.invalidate_caches()  # the first invalidation reads (no stamp yet)
    files = importer._files
    for _ in range(3):  # what every later task does
        importlib.invalidate_caches()
        assert importer._files is files  # not rebuilt: the archive did not change
    _zip(zip_on_path, {"mmoe_zip_one": "X = 1\n", "mmoe_zip_two": "Y = 2\n"})
    os.utime(zip_on_path, ns=(1, 10**18))  # a distinct mtime whatever the clock's resolution
    importlib.invalidate_caches()
    assert importer._files is not files and "mmoe_zip_two.py" in importer._files
    assert importlib.import_module("mmoe_zip_two").Y == 2


def test_without_the_stamp_every_invalidation_rereads(zip_on_path):
    """Control: Python's own zipimporter rebuilds the directory at every invalidation (what
    the workers paid per task)."""
    importlib.import_module("mmoe_zip_one")
    importer = sys.path_importer_cache[str(zip_on_path)]
    importlib.invalidate_caches()
    files = importer._files
    importlib.invalidate_caches()
    assert importer._files is not files
