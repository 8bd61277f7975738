"""The files of a checkpoint directory, read as untrusted input: nothing outside the directory, nothing but
regular files, and JSON only up to a size no real checkpoint comes near.

A symlink may point into the directory or, in the Hugging Face cache layout
(`<repo>/snapshots/<rev>/file -> ../../blobs/<sha>`), into the repository's blobs. A link elsewhere (to
`~/.ssh/id_rsa`, `/dev/zero`), a FIFO or a device is refused before it is opened for reading, and a file is
opened without blocking and checked again on the descriptor, so nothing here can hang or read without end.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from .errors import MLXCheckpointError

# config.json of the largest MLX checkpoints (per-module quantization entries for every expert of a 1T model)
# stays under 1 MB; an index lists one line per tensor (~100 bytes each: ~10 MB for 100,000 tensors)
MAX_CONFIG_BYTES = 16 << 20
MAX_INDEX_BYTES = 64 << 20


def allowed_roots(directory: Path) -> list[Path]:
    """Where the files of `directory` may resolve to: itself, and the blobs of a Hugging Face cache snapshot."""
    root = directory.resolve()
    roots = [root]
    if root.parent.name == "snapshots":
        roots.append(root.parent.parent / "blobs")
    return roots


def outside(path: Path, directory: Path) -> Path | None:
    """The target of `path` if it resolves outside the checkpoint (`allowed_roots`), else None."""
    target = path.resolve()
    return None if any(target.is_relative_to(root) for root in allowed_roots(directory)) else target


def check_inside(path: Path, directory: Path) -> None:
    """Refuse a file that resolves outside the checkpoint, or that is not a regular file."""
    target = outside(path, directory)
    if target is not None:
        raise MLXCheckpointError(
            str(path), f"is a link to {target}, outside the checkpoint directory.",
            "Copy the file into the directory: the loader reads nothing outside it.",
        )
    if not path.resolve().is_file():
        raise MLXCheckpointError(
            str(path), "is not a regular file (a broken link, a directory, a FIFO or a device).",
            "Replace it with the file itself.",
        )


def read_bytes(path: Path, directory: Path, limit: int) -> bytes:
    """The bytes of `path`, a regular file inside `directory` of at most `limit` bytes."""
    check_inside(path, directory)
    try:
        # O_NONBLOCK: a FIFO swapped in after the check opens at once instead of waiting for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise MLXCheckpointError(str(path), f"cannot be opened ({e.strerror}).") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MLXCheckpointError(str(path), "is not a regular file (a FIFO or a device).",
                                     "Replace it with the file itself.")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise MLXCheckpointError(
            str(path), f"is larger than {limit >> 20} MiB, far more than any checkpoint's.",
            "Check that it is the checkpoint's own file.",
        )
    return data


def read_json(path: Path, directory: Path, limit: int = MAX_CONFIG_BYTES) -> dict[str, Any]:
    """A JSON object read from `path` (checked and capped as `read_bytes`), or MLXCheckpointError."""
    data = read_bytes(path, directory, limit)
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise MLXCheckpointError(str(path), f"is not valid JSON ({type(e).__name__}: {e}).") from None
    if not isinstance(value, dict):
        raise MLXCheckpointError(str(path), f"must hold a JSON object, found {type(value).__name__}.")
    return value


def read_config(directory: Path) -> dict[str, Any]:
    """config.json of the checkpoint in `directory`."""
    if not directory.is_dir():
        raise MLXCheckpointError(str(directory), "is not a directory.", "Pass the MLX checkpoint's directory.")
    path = directory / "config.json"
    if not path.exists() and not path.is_symlink():
        raise MLXCheckpointError(str(directory), "has no config.json.", "Pass the MLX checkpoint's directory.")
    return read_json(path, directory)


def copyable_files(directory: Path, skip_names: set[str]) -> tuple[list[Path], list[str]]:
    """The files of `directory` a converter may copy beside its output (regular files, or links to regular files
    inside the checkpoint), and a line for each other entry saying why it is left out. Entries named in
    `skip_names` are neither."""
    copy, skipped = [], []
    for path in sorted(directory.iterdir()):
        if path.name in skip_names:
            continue
        target = outside(path, directory)
        if target is not None:
            skipped.append(f"{path.name}: a link to {target}, outside the checkpoint")
        elif not path.resolve().is_file():
            kind = "a directory" if path.resolve().is_dir() else "not a regular file"
            skipped.append(f"{path.name}: {'a broken link' if not path.exists() else kind}")
        else:
            copy.append(path)
    return copy, skipped
