"""Opening a file beneath a root without following a link swapped in after the path was checked.

The file tools check a path (symlinks resolved, inside the working dir) and then open it. Between
the two, a directory of the path can become a symlink to anywhere. So the open walks the checked
path from the root one component at a time, each opened relative to its parent's descriptor with
``O_NOFOLLOW``: a component that is now a symlink fails the open (``ELOOP``) instead of leading
outside. The checked path already has its symlinks resolved, so a link met here was swapped in.
Final files are opened non-blocking (a FIFO cannot hang the tool) and must be regular files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_SWAPPED = "a part of the path became a symbolic link after it was checked; nothing was changed"


def check_readable(info: os.stat_result, path: str, max_bytes: int) -> None:
    """Refuse what ``read_file`` must not load: a directory, anything but a regular file (a FIFO
    would block, a device never end), a file over ``max_bytes``."""
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", path)
    if info.st_size > max_bytes:
        raise OSError(
            errno.EFBIG,
            f"file is {info.st_size:,} bytes, more than the {max_bytes:,} bytes read_file "
            "loads; look at parts of it with a command instead",
            path,
        )


def read_beneath(root: str, path: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path`` (below ``root``), opened without following links."""
    fd = _open(root, path, os.O_RDONLY, create_dirs=False)
    try:
        check_readable(os.fstat(fd), path, max_bytes)
        os.set_blocking(fd, True)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_beneath(root: str, path: str, data: bytes, *, single_link: bool) -> None:
    """Replace the content of ``path`` (below ``root``; parents created), following no link.

    ``single_link``: refuse a file with more than one hard link (writing it would change the same
    file under its other names, which may lie outside ``root``).
    """
    fd = _open(root, path, os.O_WRONLY | os.O_CREAT, create_dirs=True)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        if single_link and info.st_nlink > 1:
            raise OSError(
                errno.EMLINK,
                f"the file has {info.st_nlink} hard links, so writing it would change the same "
                "file elsewhere too; the profile refuses that (write a new file instead)",
                path,
            )
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _open(root: str, path: str, flags: int, *, create_dirs: bool) -> int:
    relative = posixpath.relpath(path, root)
    parts = relative.split("/")
    if relative == "." or ".." in parts:
        raise OSError(errno.EACCES, "not a file below the working directory", path)
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            child = _enter(directory, part, create_dirs, path)
            os.close(directory)
            directory = child
        try:
            return os.open(parts[-1], flags | _FILE_FLAGS, 0o666, dir_fd=directory)
        except OSError as exc:
            raise _swapped(exc, path) from None
    finally:
        os.close(directory)


def _enter(directory: int, name: str, create: bool, path: str) -> int:
    """The descriptor of the subdirectory ``name`` of ``directory`` (made if missing)."""
    try:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=directory)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o777, dir_fd=directory)
            return os.open(name, _DIR_FLAGS, dir_fd=directory)
    except NotADirectoryError:  # O_DIRECTORY met a symlink (Linux says ENOTDIR, not ELOOP)
        if stat.S_ISLNK(os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode):
            raise OSError(errno.ELOOP, _SWAPPED, path) from None
        raise
    except OSError as exc:
        raise _swapped(exc, path) from None


def _swapped(exc: OSError, path: str) -> OSError:
    """ELOOP means ``O_NOFOLLOW`` met a symlink: say what that means here."""
    if exc.errno == errno.ELOOP:
        return OSError(errno.ELOOP, _SWAPPED, path)
    return exc
