"""Writing files so that a reader never sees a half-written one."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from .errors import MedMambaError


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path`` to write to; it is renamed into place only if the block
    succeeds, and removed otherwise, so ``path`` holds either its old content or the complete new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def refuse_existing(*paths: str | os.PathLike, overwrite: bool = False, alternative: str = "",
                    error: type = MedMambaError) -> None:
    """Raise one error, before anything is written, when one of ``paths`` exists (a folder: and is not empty)
    and ``overwrite`` is off. ``alternative`` names another way out, e.g. "--output for another folder"."""
    if overwrite:
        return
    taken = [f"{p} exists" if p.is_file() else f"{p} exists and is not empty"
             for p in map(Path, paths) if p.is_file() or (p.is_dir() and any(p.iterdir()))]
    if taken:
        it = "it" if len(taken) == 1 else "them"
        raise error(f"{' and '.join(taken)}; pass --overwrite to replace {it}"
                    + (f" or {alternative}" if alternative else ""))
