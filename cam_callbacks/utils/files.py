"""Writing files that a crash cannot destroy: a temporary file beside the target, then an atomic rename.

A SIGKILL, a Ctrl-C or a full disk in the middle of a write leaves the previous version of the file (or no
file, if there was none) instead of a truncated one: the data goes to a temporary file in the same folder,
is flushed to disk (``fsync``), and replaces the target with ``os.replace``, which is atomic on POSIX
and Windows when both paths are on the same file system (hence the same folder).
"""

from __future__ import annotations

import os
import tempfile
from typing import Union

#: Prefix and suffix of the temporary files (a killed process may leave one behind; it is never the target).
TEMP_PREFIX = ".tmp-"
TEMP_SUFFIX = ".partial"


def atomic_write(path: Union[str, "os.PathLike[str]"], data: Union[bytes, str]) -> str:
    """Write ``data`` (bytes, or text written as UTF-8) to ``path`` atomically; returns the path.

    The folder is created if needed. Readers see either the old file or the complete new one, never a part.
    On an error (including ``KeyboardInterrupt``) the temporary file is removed and the target is unchanged.

    Example::

        >>> import tempfile, os
        >>> folder = tempfile.mkdtemp()
        >>> path = atomic_write(os.path.join(folder, "a", "note.txt"), "hello")
        >>> open(path, encoding="utf-8").read(), sorted(os.listdir(os.path.dirname(path)))
        ('hello', ['note.txt'])
    """
    target = os.fspath(path)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=TEMP_PREFIX + os.path.basename(target) + ".", suffix=TEMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, _NEW_FILE_MODE)
        os.replace(temporary, target)
    except BaseException:
        _remove_quietly(temporary)
        raise
    _sync_folder(folder)
    return target


def _default_mode() -> int:
    """The permissions ``open(path, "w")`` gives a new file (``mkstemp`` makes it 0o600). Read once, at import:
    ``os.umask`` can only be read by setting it, which must not happen while a writer thread creates files."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_NEW_FILE_MODE = _default_mode()


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _sync_folder(folder: str) -> None:
    """Flush the folder entry of the rename to disk where the platform allows it (POSIX; not Windows)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
