"""Reading rosbag2 (sqlite3 or mcap) and ROS 1 bags with the ``rosbags`` library.

``Bag(path)`` opens a rosbag2 directory, one of its ``.db3``/``.mcap`` files,
or a ROS 1 ``.bag``. Messages come deserialized into rosbags dataclasses
(ROS field names, so :mod:`dsg_ros.msgs` converts them), in bag receive-time
order. Every failure, including a corrupt file found halfway through, is a
:class:`BagError` naming the file.
"""

from __future__ import annotations

from collections.abc import Collection, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from dsg_ros.bag.errors import BagError
from dsg_ros.msgs import SUPPORTED_TYPES

_STORAGE_SUFFIXES = (".db3", ".mcap")


class TopicInfo(NamedTuple):
    msgtype: str
    count: int  # type: ignore[assignment]  # a field may shadow tuple.count; mypy objects to any such name


class BagMessage(NamedTuple):
    """One message: its topic and type, the bag's receive time (integer ns)
    and the deserialized message (a rosbags dataclass)."""

    topic: str
    msgtype: str
    log_time_ns: int
    msg: Any


@dataclass(frozen=True)
class BagInfo:
    """What a bag holds. ``start_ns``/``end_ns``: receive times of its first and
    last message (0 for an empty bag)."""

    path: Path
    topics: dict[str, TopicInfo]
    start_ns: int
    end_ns: int

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    @property
    def message_count(self) -> int:
        return sum(t.count for t in self.topics.values())

    def describe(self) -> str:
        """``topic (type, N messages)`` for every topic, one line each."""
        return "\n".join(f"  {name} ({t.msgtype}, {t.count} messages)" for name, t in sorted(self.topics.items())) or "  (no topics)"


def _storage_path(path: Path) -> Path:
    """What rosbags opens for ``path``: a rosbag2 directory needs its
    metadata.yaml; without one, its only storage file will do."""
    if not path.exists():
        raise BagError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / "metadata.yaml").is_file():
            return path
        files = sorted(p for p in path.iterdir() if p.suffix in _STORAGE_SUFFIXES)
        if len(files) == 1:
            return files[0]
        raise BagError(f"{path}: not a bag: a rosbag2 directory needs metadata.yaml (or a single .db3/.mcap file), found {len(files)} storage files")
    if path.suffix not in (*_STORAGE_SUFFIXES, ".bag"):
        raise BagError(f"{path}: not a bag: expected a rosbag2 directory, a .db3 or .mcap file, or a ROS 1 .bag")
    return path


class Bag:
    """An open bag; use as a context manager (``with Bag(path) as bag:``).

    Bags without embedded type definitions (older rosbag2 sqlite3) are read
    with the ROS 2 Kilted definitions of the standard messages.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        storage = _storage_path(self.path)
        try:
            self._reader = AnyReader([storage], default_typestore=get_typestore(Stores.ROS2_KILTED))
            self._reader.open()
        except Exception as exc:  # rosbags' parsers fail on a corrupt file with any exception type
            raise BagError(f"{self.path}: cannot read bag: {type(exc).__name__}: {exc}") from None
        try:
            self.info = self._info()
        except BagError:
            self._reader.close()
            raise

    def _info(self) -> BagInfo:
        topics = {}
        for name, t in self._reader.topics.items():
            if t.msgtype is None:
                raise BagError(f"{self.path}: topic {name} carries several message types; not supported")
            topics[name] = TopicInfo(t.msgtype, t.msgcount)
        count = sum(t.count for t in topics.values())
        # rosbags' end_time is one past the last message.
        start, end = (self._reader.start_time, self._reader.end_time - 1) if count else (0, 0)
        return BagInfo(self.path, topics, start, end)

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> Bag:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def require(self, topics: Sequence[str], types: Collection[str] | None = SUPPORTED_TYPES) -> None:
        """BagError unless every topic is in the bag with a type in ``types``
        (None: any type); the message lists what the bag has."""
        missing = [t for t in topics if t not in self.info.topics]
        if missing:
            raise BagError(f"{self.path}: no topic {', '.join(missing)}; the bag has:\n{self.info.describe()}")
        if types is not None:
            for t in topics:
                msgtype = self.info.topics[t].msgtype
                if msgtype not in types:
                    raise BagError(f"{self.path}: topic {t} has type {msgtype}, which is not supported (supported: {', '.join(sorted(types))})")

    def messages(self, topics: Sequence[str], types: Collection[str] | None = SUPPORTED_TYPES) -> Generator[BagMessage, None, None]:
        """The messages of ``topics`` in receive-time order, deserialized.
        Checks the topics first (:meth:`require`)."""
        self.require(topics, types)
        connections = [c for c in self._reader.connections if c.topic in topics]
        stream = self._reader.messages(connections=connections)
        while True:
            try:
                item = next(stream, None)
                if item is None:
                    return
                connection, log_time, raw = item
                msg = self._reader.deserialize(raw, connection.msgtype)
            except Exception as exc:  # a corrupt record: any exception type from rosbags' parsers
                raise BagError(f"{self.path}: cannot read message: {type(exc).__name__}: {exc}") from None
            yield BagMessage(connection.topic, connection.msgtype, log_time, msg)


def bag_info(path: str | Path) -> BagInfo:
    """Topics (type, count), start, end and duration of the bag at ``path``."""
    with Bag(path) as bag:
        return bag.info
