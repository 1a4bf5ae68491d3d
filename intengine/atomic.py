"""Writing a folder all at once, so that a failed save never leaves a half-written folder and
never loses the folder the user had (``save_hf_folder``, ``save_quantized``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["write_folder_atomically"]


def write_folder_atomically(path: Path, fill: Callable[[Path], None]) -> Path:
    """Write a folder at ``path`` all at once: ``fill(tmp)`` writes the files into a temporary
    sibling folder, which then replaces ``path`` by renames (a previous folder is moved aside
    and put back if the final rename fails).  On any error the temporary folder is removed and
    what the user had at ``path`` is left as it was."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        fill(tmp)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.rmdir(old)
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            if old is not None:
                os.rename(old, path)  # put the previous folder back
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
