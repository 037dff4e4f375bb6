"""Writing files safely: modes the umask allows, a write check before long work, clear errors.

Three problems meet here. safetensors (0.8) writes through a private temporary file, mode 0600,
that it renames into place, so weights would be unreadable by anyone but their writer (another
user, the API container's unprivileged user) unless esmtune sets the mode the umask implies. A
full disk or a read-only folder surfaces as ``OSError`` from Python writers but as
``SafetensorError`` (the OS error only in its text) from safetensors; :func:`save_tensors` turns
the second into the first, so callers deal with one kind of error. And a command should find
out that it cannot write its output before hours of work, not after (:func:`check_writable`).
"""

from __future__ import annotations

import errno
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from esmtune.errors import EsmtuneError, StorageError

if TYPE_CHECKING:  # save_tensors imports them: the rest serves torch-free commands too
    import torch

__all__ = [
    "apply_umask",
    "apply_umask_tree",
    "check_writable",
    "file_mode",
    "save_tensors",
    "storage_errno",
    "storage_errors",
    "storage_message",
]

# OS errors that mean "this place cannot take the file", with how to say them.
_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
# What to do about each, when the caller has nothing more specific to say.
_FIXES = {
    errno.ENOSPC: "free space on that disk, or choose a folder on another one",
    errno.EDQUOT: "free space within your quota, or choose a folder elsewhere",
    errno.EROFS: "choose a folder on a writable file system",
    errno.EACCES: "choose a folder you can write to",
    errno.EPERM: "choose a folder you can write to",
}
_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask, read without changing it where the kernel shows it (Linux ≥ 4.7).

    ``os.umask`` can only be read by setting it; elsewhere it is set to the strict 077 for an
    instant (so a file another thread creates meanwhile is too private, never too open).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new regular file gets from ``open``: 0o666 less the umask (0644 under 022)."""
    return 0o666 & ~_umask()


def apply_umask(path: Path) -> None:
    """Give a file the mode the umask implies (undoing a writer's private 0600)."""
    os.chmod(path, file_mode())


def apply_umask_tree(root: Path) -> None:
    """:func:`apply_umask` on every file under ``root``, and the umask's mode on its folders."""
    mask = _umask()
    for folder, _, files in os.walk(root):
        os.chmod(folder, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~mask)


def save_tensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file atomically, with the umask's mode; storage errors as ``OSError``.

    Raises:
        OSError: When the file cannot be written; ``errno`` and ``filename`` are set even when
            safetensors reported the failure only in the text of its own error.
    """
    from safetensors import SafetensorError

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(temporary), metadata=metadata)
        apply_umask(temporary)
        os.replace(temporary, path)
    except SafetensorError as error:
        temporary.unlink(missing_ok=True)
        code = _errno_in_text(str(error))
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from error
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


def save_file(
    tensors: dict[str, torch.Tensor], filename: str, metadata: dict[str, str] | None = None
) -> None:
    """Write with safetensors' ``save_file``, imported on first use (it imports torch)."""
    from safetensors.torch import save_file as write

    write(tensors, filename, metadata=metadata)


def _errno_in_text(text: str) -> int | None:
    """The OS error number a library put into its message ("... (os error 28)"), if any."""
    match = re.search(r"os error (\d+)", text)
    if match:
        return int(match.group(1))
    for code in _REASONS:  # torch and others quote strerror instead
        if os.strerror(code) in text:
            return code
    return None


def storage_errno(error: BaseException) -> int | None:
    """The errno of a full disk, quota, read-only or permission failure in ``error``'s chain."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _REASONS:
            return current.errno
        # safetensors' own error (by name: it is imported only where tensors are written).
        if isinstance(current, RuntimeError) or type(current).__name__ == "SafetensorError":
            code = _errno_in_text(str(current))
            if code in _REASONS:
                return code
        current = current.__cause__ or current.__context__
    return None


def storage_message(error: BaseException, code: int, folder: Path, fix: str | None) -> str:
    """One line: which path, what the file system said, and what to do about it."""
    filename = getattr(error, "filename", None)
    where = Path(filename) if filename else folder
    verb = "access" if code in (errno.EACCES, errno.EPERM) else "write"
    return f"cannot {verb} {where}: {_REASONS[code]}. {fix or _FIXES[code].capitalize()}"


def check_writable(folder: Path, fix: str | None = None) -> None:
    """Create ``folder`` if needed, then create and remove a probe file in it.

    Commands call this before their expensive work (loading a model, training, tracing), so
    that a read-only or full folder is reported in seconds.

    Args:
        folder: Where the command will write.
        fix: What to tell the user to do instead (e.g. "choose another output.dir").

    Raises:
        StorageError: Naming the folder, the reason and the fix.
    """
    probe = folder / f".esmtune-write-check-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(descriptor, b"esmtune write check\n")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        probe.unlink()
    except OSError as error:
        code = storage_errno(error)
        if code is None:
            raise
        # The folder is what the user chose and can change; the probe's name would only puzzle.
        raise StorageError(storage_message(OSError(), code, folder, fix)) from error


@contextmanager
def storage_errors(folder: Path, fix: Callable[[int], str] | None = None) -> Iterator[None]:
    """Turn a full disk, read-only or permission failure inside the block into a StorageError.

    Args:
        folder: The folder the block writes to, named when the error names no file.
        fix: Called with the errno after the failure (so it can look at what is on disk then)
            for what to do; by default, the generic advice for that errno.

    Raises:
        StorageError: For those failures; every other exception passes unchanged.
    """
    try:
        yield
    except EsmtuneError:
        raise
    except Exception as error:
        code = storage_errno(error)
        if code is None:
            raise
        advice = fix(code) if fix is not None else None
        raise StorageError(storage_message(error, code, folder, advice)) from error
