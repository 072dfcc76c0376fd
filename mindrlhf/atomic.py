"""Atomic writes: a file or folder appears under its final name complete, or not at all.

Every file and folder the project writes whole goes through this module (appended log and metrics lines and
TensorBoard event files are appended, not rewritten). The content is written under a temporary name
in the destination's own folder (a rename is atomic only within one file system), renamed into place when the
writing block succeeds, and removed when it fails, so a failed write leaves an earlier file of that name as it
was and no temporary file behind. The parent folder is created when missing.

- :func:`atomic_path`: a temporary path for one file (for writers that take a path: MindSpore checkpoints,
  matplotlib figures).
- :func:`atomic_open`: the same as an open text file; :func:`write_text` and :func:`write_json` on top of it.
- :func:`atomic_folder`: a temporary folder that replaces a whole folder (Hugging Face checkpoints, adapters).
- :func:`atomic_files`: a temporary folder whose files move into one destination folder, in a given order
  (a MindRecord file and its ``.db`` index, which must be written under their final base names).

A process killed inside the block (SIGKILL) cannot clean up: its temporary file ``<path>.tmp.<pid>[suffix]`` stays,
and readers that list a folder skip names containing ``.tmp.``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import IO, Any, Iterable, Iterator, Optional, Sequence

TMP_MARK = ".tmp."  # in every temporary name this module makes


def _parent(path: str) -> str:
    """The folder of ``path``, created when missing."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    return folder


def remove_file(path: str) -> None:
    """Remove ``path`` if it exists (a leftover temporary file)."""
    if os.path.lexists(path):
        os.remove(path)


@contextmanager
def atomic_path(path: str, suffix: str = "", mode: Optional[int] = None) -> Iterator[str]:
    """Yield a temporary path beside ``path``; when the block succeeds the file written there becomes ``path``.

    Args:
        path: the final file.
        suffix: appended to the temporary name (MindSpore appends ``.ckpt`` to a checkpoint name without it).
        mode: permission bits given to the file before the rename (None: as the writer created it).
    On any exception the temporary file is removed and the exception propagates; ``path`` is untouched.
    """
    _parent(path)
    tmp = f"{path}{TMP_MARK}{os.getpid()}{suffix}"
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        remove_file(tmp)


@contextmanager
def atomic_open(path: str, newline: Optional[str] = None, mode: Optional[int] = None) -> Iterator[IO[str]]:
    """:func:`atomic_path` as a UTF-8 text file open for writing; it is closed before the rename."""
    with atomic_path(path, mode=mode) as tmp:
        with open(tmp, "w", encoding="utf-8", newline=newline) as f:
            yield f


def write_text(path: str, text: str, newline: Optional[str] = None) -> str:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path, newline=newline) as f:
        f.write(text)
    return path


def write_json(
    path: str,
    data: Any,
    indent: int = 1,
    ensure_ascii: bool = True,
    mode: Optional[int] = None,
    trailing_newline: bool = False,
) -> str:
    """Write ``data`` as JSON to ``path`` atomically; returns ``path``."""
    with atomic_open(path, mode=mode) as f:
        json.dump(data, f, indent=indent, ensure_ascii=ensure_ascii)
        if trailing_newline:
            f.write("\n")
    return path


def write_jsonl(path: str, records: Iterable[Any]) -> str:
    """Write ``records`` as JSON Lines (UTF-8, not ASCII-escaped) to ``path`` atomically; returns ``path``."""
    with atomic_open(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def _fresh_folder(final: str) -> str:
    """A new empty folder beside ``final`` with the usual permissions (0777 less the umask; ``mkdtemp`` makes
    it private)."""
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}{TMP_MARK}", dir=_parent(final))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


@contextmanager
def atomic_folder(path: str) -> Iterator[str]:
    """Yield a fresh temporary folder beside ``path``; when the block succeeds it becomes ``path``.

    An existing folder at ``path`` is moved aside, the new one renamed into place, then the old one deleted, so a
    complete folder is under ``path`` at every moment. On any exception the temporary folder is deleted and
    ``path`` is untouched.
    """
    tmp = _fresh_folder(path)
    try:
        yield tmp
        if os.path.isdir(path):
            old = tmp + ".old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_files(paths: Sequence[str]) -> Iterator[str]:
    """Yield a fresh temporary folder beside ``paths`` (all in one folder); the block writes each file there under
    its base name. When the block succeeds the files move into place in the order of ``paths``; the temporary
    folder is deleted whatever happens."""
    folders = {os.path.dirname(os.path.abspath(p)) for p in paths}
    if len(folders) != 1:
        raise ValueError(f"atomic_files: {list(paths)} are not in one folder")
    tmp = _fresh_folder(paths[0])
    try:
        yield tmp
        for path in paths:
            os.replace(os.path.join(tmp, os.path.basename(path)), path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
