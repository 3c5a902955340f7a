"""What ``map_file`` maps: a path, a file descriptor or an object with ``fileno()``, resolved
to an open descriptor with its size (validation step 1 of the contract).
"""

from __future__ import annotations

import errno
import os
from typing import Final, Protocol, TypeAlias, Union, final

from .. import _ffi
from ._errors import InvalidFileHandleError, InvalidFileTypeError, NoAccessError

__all__ = ["Source", "open_error", "open_source", "path_flags", "path_label"]

_FD_MAX: Final = 2**31 - 1


@final
class Source:
    """An open file ready to be mapped. ``owned``: the descriptor was opened here (from a path);
    it is closed by ``close()`` once the mapping is made, or when the object dies, whatever
    interrupts the map in between."""

    __slots__ = ("fd", "name", "owned", "size")

    def __init__(self, fd: int, owned: _ffi.OwnedFd | None, size: int, name: str) -> None:
        self.fd = fd
        self.owned = owned
        self.size = size
        self.name = name

    def close(self) -> None:
        if self.owned is not None:
            self.owned.close()


def _check_fd(fd: int, name: str, owned: _ffi.OwnedFd | None) -> Source:
    size = _ffi.fdcheck(fd)
    if size < 0:
        if owned is not None:
            owned.close()
        raise fd_error(fd, size, name)
    return Source(fd, owned, size, name)


def fd_error(fd: int, code: int, name: str) -> Exception:
    """The exception for a negative ``_ffi.fdcheck`` result."""
    if code == _ffi.AP_FD_PATH:
        return InvalidFileHandleError(f"{name} is an O_PATH descriptor")
    if code == _ffi.AP_FD_WRONLY:
        return InvalidFileHandleError(f"{name} is open write-only")
    if code == _ffi.AP_FD_DIR:
        return InvalidFileTypeError(f"{name} is a directory")
    if code == _ffi.AP_FD_NOTREG:
        return InvalidFileTypeError(f"{name} is not a regular file")
    if code == -errno.EBADF:
        return InvalidFileHandleError(f"file descriptor {fd} is not open")
    return OSError(-code, os.strerror(-code))


class HasFileno(Protocol):
    """An open file object: anything with ``fileno()`` (``open()``'s result, a socket...)."""

    def fileno(self) -> int: ...


#: What ``map_file`` maps: a path, an open descriptor, or an object with ``fileno()``.
FileSource: TypeAlias = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]", int, HasFileno]

#: What a shared writable mapping of a file that cannot be written can do instead.
WRITE_HINT: Final = (
    "map it with protection=Protection.READ, or with sharing=Sharing.PRIVATE for a "
    "copy-on-write mapping whose stores never reach the file"
)


def path_flags(writable: bool) -> int:
    """How a path is opened: read-write for a shared mapping with WRITE, read-only otherwise;
    O_NONBLOCK keeps the open of a FIFO from blocking (it is then refused as not a regular
    file). O_CLOEXEC is added by the C core."""
    return (os.O_RDWR if writable else os.O_RDONLY) | os.O_NONBLOCK


def path_label(path: str | bytes) -> str:
    return repr(path) if isinstance(path, bytes) else path


def open_error(path: str | bytes, writable: bool, exc: OSError) -> Exception:
    """The exception for a refused open of ``path`` (``exc``: the OSError of open(2))."""
    if isinstance(exc, IsADirectoryError):
        return InvalidFileTypeError(f"{path!r} is a directory")
    if isinstance(exc, PermissionError):
        if writable:  # a shared writable mapping needs the file open for writing
            return NoAccessError(f"cannot open {path!r} for writing: {exc.strerror} ({WRITE_HINT})")
        return NoAccessError(f"cannot open {path!r}: {exc.strerror}")
    return exc


def open_source(file: object, writable: bool) -> Source:
    """Resolve ``file`` (path, descriptor or ``fileno()`` object) to an open, mappable file.

    A path is opened read-write when ``writable`` (a shared mapping with WRITE), read-only
    otherwise, always with O_CLOEXEC; O_NONBLOCK keeps the open of a FIFO from blocking (a FIFO
    is then refused as not a regular file).
    """
    if isinstance(file, bool):
        raise TypeError("file must be a path, a file descriptor or have fileno(), not bool")
    if isinstance(file, int):
        if file < 0 or file > _FD_MAX:
            raise InvalidFileHandleError(f"{file} is not a valid file descriptor")
        return _check_fd(file, f"file descriptor {file}", owned=None)
    if isinstance(file, (str, bytes, os.PathLike)):
        path = os.fspath(file)
        try:
            owned = _ffi.open_path(path, path_flags(writable))
        except OSError as exc:
            raise open_error(path, writable, exc) from None
        return _check_fd(owned.fd, path_label(path), owned=owned)
    fileno = getattr(file, "fileno", None)
    if fileno is None:
        raise TypeError(
            f"file must be a path, a file descriptor or have fileno(), not {type(file).__name__}"
        )
    try:
        fd = fileno()
    except (ValueError, OSError) as exc:
        raise InvalidFileHandleError(f"{file!r} has no usable file descriptor: {exc}") from None
    if isinstance(fd, bool) or not isinstance(fd, int):
        raise TypeError(f"fileno() returned {type(fd).__name__}, not int")
    if fd < 0 or fd > _FD_MAX:
        raise InvalidFileHandleError(f"fileno() returned {fd}, not a valid file descriptor")
    name = getattr(file, "name", None)
    return _check_fd(fd, name if isinstance(name, str) else f"file descriptor {fd}", owned=None)
