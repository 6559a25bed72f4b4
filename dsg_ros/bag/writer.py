"""Writing rosbag2 bags (sqlite3 or mcap) atomically.

The bag is written into a hidden temporary directory beside the
destination and renamed into place when complete, so an exception or an
interrupt leaves nothing at the destination (only, after a hard kill, a
``.NAME.*.partial`` directory beside it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer

from dsg_ros.bag.build import TYPESTORE
from dsg_ros.bag.errors import BagError

STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}

# Metadata version 8: Humble's and Jazzy's rosbag2 read it; version 9
# changed how QoS profiles are stored, which older readers reject.
_VERSION: Final = 8

# /tf_static is latched: `ros2 bag play` must offer it transient-local, or
# late subscribers never see the static transforms.
_LATCHED = Qos(
    history=QosHistory.KEEP_LAST,
    depth=1,
    reliability=QosReliability.RELIABLE,
    durability=QosDurability.TRANSIENT_LOCAL,
    deadline=QosTime(0, 0),
    lifespan=QosTime(0, 0),
    liveliness=QosLiveliness.AUTOMATIC,
    liveliness_lease_duration=QosTime(0, 0),
    avoid_ros_namespace_conventions=False,
)
_LATCHED_TOPICS = frozenset({"/tf_static"})


class BagWriter:
    """``with BagWriter(path, "mcap") as w: w.write(topic, msgtype, msg, stamp_ns)``.

    ``msg`` is a rosbags typestore message (see :mod:`dsg_ros.bag.build`) or a
    mapping of its fields. Refuses an existing ``path`` unless ``overwrite``;
    an overwritten bag is replaced only once the new one is complete.
    """

    def __init__(self, path: str | Path, storage: str = "sqlite3", overwrite: bool = False) -> None:
        if storage not in STORAGES:
            raise BagError(f"{path}: unknown storage {storage!r}; expected one of {sorted(STORAGES)}")
        self.path, self.storage, self.overwrite = Path(path), storage, overwrite
        self.counts: dict[str, int] = {}
        self._writer: Writer | None = None
        self._tmp: Path | None = None
        self._connections: dict[str, Any] = {}

    def __enter__(self) -> BagWriter:
        if self.path.exists() and not self.overwrite:
            raise BagError(f"{self.path}: already exists; not overwriting it")
        parent = self.path.absolute().parent
        if not parent.is_dir():
            raise BagError(f"{self.path}: no directory {parent}")
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".partial", dir=parent))
        # The bag inside keeps the destination's name: rosbag2 names its storage file after the directory.
        self._writer = Writer(self._tmp / self.path.name, version=_VERSION, storage_plugin=STORAGES[self.storage])
        self._writer.open()
        return self

    def write(self, topic: str, msgtype: str, msg: Any, stamp_ns: int) -> None:
        """Append ``msg`` on ``topic`` with receive time ``stamp_ns``; a topic
        keeps the type of its first message."""
        if self._writer is None:
            raise BagError(f"{self.path}: write outside `with BagWriter(...)`")
        connection = self._connections.get(topic)
        if connection is None:
            qos = [_LATCHED] if topic in _LATCHED_TOPICS else []
            connection = self._writer.add_connection(topic, msgtype, typestore=TYPESTORE, offered_qos_profiles=qos)
            self._connections[topic] = connection
        elif connection.msgtype != msgtype:
            raise BagError(f"{self.path}: topic {topic} has type {connection.msgtype}, cannot also write {msgtype}")
        if isinstance(msg, Mapping):
            msg = TYPESTORE.types[msgtype](**msg)
        self._writer.write(connection, int(stamp_ns), TYPESTORE.serialize_cdr(msg, msgtype))
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        writer, tmp = self._writer, self._tmp
        self._writer = self._tmp = None
        assert writer is not None and tmp is not None
        try:
            if exc_type is not None:
                with suppress(Exception):  # the original exception is the one to report
                    writer.abort()
                return
            writer.close()
            self._replace(tmp / self.path.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _replace(self, done: Path) -> None:
        """Rename the finished bag to the destination; an old bag there moves
        into the temporary directory first (deleted with it)."""
        if self.path.exists() or self.path.is_symlink():
            if not self.overwrite:
                raise BagError(f"{self.path}: appeared while writing; not overwriting (the new bag is discarded)")
            os.replace(self.path, done.parent / "replaced")
        os.replace(done, self.path)
