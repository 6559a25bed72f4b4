"""Writing files atomically: a temporary file beside the target, renamed onto it.

A reader (or a crash) then sees the old file or the new one, never half of
one. The temporary name keeps the target's suffix, so writers that choose a
format by extension (matplotlib's ``savefig``) still do. A writer killed
mid-write (SIGKILL, power loss) leaves its temporary file behind: hidden
(``.<name>.<random><suffix>``), beside the target, one per interrupted write.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# mkstemp creates files readable by their owner only; a result file should get
# the permissions any other file would (0666 less the umask). Read once, at
# import: setting the umask to read it is not thread-safe.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: write(tmp)``: ``tmp`` becomes ``p`` when the
    block ends without an exception; otherwise it is removed and ``p`` is left
    as it was. The parent directory must exist. ``tmp`` is flushed to disk
    before the rename: after a power loss, too, ``p`` is the old or the new
    file, not an empty one."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
