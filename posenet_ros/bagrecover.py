"""Reading rosbag2 storage files that were cut off mid-write, as ``mcap recover`` and ``ros2 bag
reindex`` would, but on the fly and without ever writing into the recording.

A recorder killed by a power loss or a signal leaves:
- MCAP: no summary and no footer (rosbags refuses the file: ``File end magic is invalid``), often a
  chunk cut in the middle. ``RecoveringMcapReader`` then scans the file record by record from the
  start and indexes every complete message, including those of the cut chunk that lie in the part
  that is on disk (for zstd/lz4 chunks: the part a streaming decompressor gets out of it).
- sqlite3: the newest transactions still in the ``-wal`` file next to the ``.db3`` (rosbags reads
  the ``.db3`` immutable and never sees them), possibly a last frame half-written, or a ``.db3``
  cut short. ``RecoveringSqlite3Reader`` copies the database and its WAL into a private temporary
  folder, lets SQLite apply the committed transactions there, and salvages the rows up to the
  first unreadable page if the file itself is damaged.

Both are rosbags storage plugins: ``install`` puts them into an open ``AnyReader``'s directory
reader, so everything downstream (typestores, message order, split files) is rosbags' own. What
was lost is collected in a ``RecoveryLog`` for the caller to report on one line.
"""

from __future__ import annotations

import heapq
import shutil
import sqlite3
import struct
import sys
from binascii import crc32
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import lz4.frame
from rosbags.interfaces import Connection, ConnectionExtRosbag2, MessageDefinition, MessageDefinitionFormat
from rosbags.rosbag2.errors import ReaderError
from rosbags.rosbag2.metadata import parse_qos
from rosbags.rosbag2.storage_mcap import McapReader
from rosbags.rosbag2.storage_sqlite3 import Sqlite3Reader

from posenet_ros.errors import first_line

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

MCAP_MAGIC = b"\x89MCAP0\r\n"
# MCAP opcodes (https://mcap.dev/spec)
OP_HEADER, OP_FOOTER, OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_CHUNK, OP_DATA_END = (
    0x01,
    0x02,
    0x03,
    0x04,
    0x05,
    0x06,
    0x0F,
)
MAX_KNOWN_OPCODE = 0x0F  # 0x80-0xff are user records; anything else is garbage
MESSAGE_PREFIX = 22  # channel id u16, sequence u32, log time u64, publish time u64
SCHEMA_FORMATS = {"ros2msg": MessageDefinitionFormat.MSG, "ros2idl": MessageDefinitionFormat.IDL}
SQLITE_HEADER = b"SQLite format 3\x00"
WAL_HEADER_BYTES, WAL_FRAME_HEADER_BYTES = 32, 24


@dataclass
class RecoveryLog:
    """What the recovering readers of one opened bag found: one note per damaged file. ``workdir``
    is a private temporary folder for sqlite copies (never the recording's folder)."""

    workdir: Path
    notes: dict[str, str] = field(default_factory=dict)
    sqlite_copies: dict[Path, Path] = field(default_factory=dict)  # original -> readable copy
    mcap_scans: dict[Path, Any] = field(default_factory=dict)  # original -> (scan, end): scanned once

    def note(self, file: Path, text: str) -> None:
        self.notes[file.name] = text

    def line(self) -> str | None:
        """One line for the user, or None when nothing was damaged."""
        if not self.notes:
            return None
        return "recovered a damaged recording: " + "; ".join(f"{name}: {text}" for name, text in self.notes.items())


def install(reader: Any, log: RecoveryLog) -> bool:
    """Make an unopened ``AnyReader`` of a rosbag2 folder open its storage files with the recovering
    plugins (per instance, nothing global). False when the reader is not one of a rosbag2 folder."""
    from rosbags.rosbag2.reader import DirectoryReader

    installed = False
    for sub in getattr(reader, "readers", []):
        storage = getattr(sub, "storage", None)
        if isinstance(storage, DirectoryReader):
            storage.STORAGE_PLUGINS = plugins(log)
            installed = True
    return installed


def plugins(log: RecoveryLog) -> dict[str, Callable[[Any], Any]]:
    return {"mcap": partial(RecoveringMcapReader, log=log), "sqlite3": partial(RecoveringSqlite3Reader, log=log)}


# -- MCAP -------------------------------------------------------------------------------------------


class _Damaged(Exception):
    """Bytes that do not parse as what the MCAP spec says is there."""


@dataclass(frozen=True)
class _Chunk:
    data_offset: int  # file offset of the (compressed) records
    data_size: int  # bytes of it on disk: less than the record says when the chunk was cut
    compression: str
    uncompressed_size: int
    crc: int
    complete: bool


@dataclass(frozen=True)
class _MessageRef:
    log_time: int
    channel_id: int
    chunk: int  # index into the scan's chunks, -1 for a message record outside any chunk
    offset: int  # of the message data, in the file (chunk -1) or in the decompressed chunk
    size: int


@dataclass
class _McapScan:
    schemas: dict[int, tuple[str, str, str]] = field(default_factory=dict)  # id -> name, encoding, data
    channels: dict[int, tuple[str, int, str, bytes]] = field(default_factory=dict)  # topic, schema, enc, meta
    chunks: list[_Chunk] = field(default_factory=list)
    messages: list[_MessageRef] = field(default_factory=list)
    problem: str = ""  # what ended the scan, if it was damage
    lost: str = ""  # what of the file could not be used, when not simply "from where the scan stopped"


def _also(before: str, problem: str) -> str:
    return f"{before}, then {problem}" if before else problem


def _string(buf: bytes | memoryview, pos: int) -> tuple[str, int]:
    data, pos = _bytes(buf, pos)
    try:
        return bytes(data).decode(), pos
    except UnicodeDecodeError:
        raise _Damaged("a string that is not UTF-8") from None


def _bytes(buf: bytes | memoryview, pos: int) -> tuple[bytes | memoryview, int]:
    if pos + 4 > len(buf):
        raise _Damaged("a length prefix past the record's end")
    (n,) = struct.unpack_from("<I", buf, pos)
    if pos + 4 + n > len(buf):
        raise _Damaged("a field longer than its record")
    return buf[pos + 4 : pos + 4 + n], pos + 4 + n


def _decompress(data: bytes, chunk: _Chunk) -> bytes:
    """The chunk's records; for a cut chunk, as many of them as the bytes on disk decode to."""
    try:
        if chunk.compression == "":
            raw = bytes(data)
        elif chunk.compression == "zstd":
            raw = zstd.ZstdDecompressor().decompress(data)
        elif chunk.compression == "lz4":
            raw = lz4.frame.LZ4FrameDecompressor().decompress(data)
        else:
            raise _Damaged(f"unsupported chunk compression {chunk.compression!r}")
    except (zstd.ZstdError, RuntimeError, ValueError) as exc:  # lz4 raises RuntimeError on bad data
        raise _Damaged(f"{chunk.compression} data does not decompress ({first_line(exc)})") from None
    if chunk.complete:
        if len(raw) != chunk.uncompressed_size:
            raise _Damaged(f"a chunk decompresses to {len(raw)} bytes, its header says {chunk.uncompressed_size}")
        if chunk.crc and crc32(raw) != chunk.crc:
            raise _Damaged("a chunk's checksum does not match")
    return raw[: chunk.uncompressed_size]


def _parse_schema(scan: _McapScan, body: bytes | memoryview) -> None:
    if len(body) < 2:
        raise _Damaged("a schema record too short")
    (sid,) = struct.unpack_from("<H", body)
    name, pos = _string(body, 2)
    encoding, pos = _string(body, pos)
    data, _ = _bytes(body, pos)
    scan.schemas[sid] = (name, encoding, bytes(data).decode(errors="replace"))


def _parse_channel(scan: _McapScan, body: bytes | memoryview) -> None:
    if len(body) < 4:
        raise _Damaged("a channel record too short")
    cid, sid = struct.unpack_from("<HH", body)
    topic, pos = _string(body, 4)
    encoding, pos = _string(body, pos)
    meta, _ = _bytes(body, pos)
    scan.channels[cid] = (topic, sid, encoding, bytes(meta))


def _records(buf: bytes | memoryview, scan: _McapScan, chunk: int, base: int) -> int:
    """Index the complete records of a chunk's decompressed records (``buf``); returns the offset
    after the last complete one."""
    pos = 0
    while pos + 9 <= len(buf):
        op, length = struct.unpack_from("<BQ", buf, pos)
        end = pos + 9 + length
        if end > len(buf):
            break
        body = buf[pos + 9 : end]
        if op == OP_SCHEMA:
            _parse_schema(scan, body)
        elif op == OP_CHANNEL:
            _parse_channel(scan, body)
        elif op == OP_MESSAGE:
            if length < MESSAGE_PREFIX:
                raise _Damaged(f"a message record of {length} bytes")
            cid, _, log_time, _ = struct.unpack_from("<HIQQ", body)
            scan.messages.append(_MessageRef(log_time, cid, chunk, base + pos + 9 + MESSAGE_PREFIX, length - 22))
        pos = end
    return pos


def scan_mcap(f: Any, size: int) -> tuple[_McapScan, int]:
    """Index every complete record from the start of the file, stopping at the data section's end
    or at the first damage; returns the scan and the offset where readable records end."""
    f.seek(0)
    if f.read(8) != MCAP_MAGIC:
        raise ReaderError("File magic is invalid.")
    scan, pos = _McapScan(), 8
    while True:
        if pos == size:
            scan.problem = _also(scan.problem, "the file ends without the MCAP summary and footer (not closed)")
            return scan, pos
        f.seek(pos)
        head = f.read(9)
        if len(head) < 9:
            scan.problem = _also(scan.problem, f"a record header cut short at offset {pos}")
            return scan, pos
        op, length = struct.unpack("<BQ", head)
        if op == 0 or MAX_KNOWN_OPCODE < op < 0x80:
            scan.problem = _also(scan.problem, f"garbage at offset {pos} (record opcode {op:#04x})")
            return scan, pos
        if op in (OP_DATA_END, OP_FOOTER):
            return scan, pos  # the data section is whole; only the summary or footer is missing or cut
        body_start = pos + 9
        available = min(length, size - body_start)
        try:
            if op == OP_CHUNK:
                if not _chunk(f, scan, body_start, length, available):
                    return scan, pos
            elif available < length:
                scan.problem = _also(scan.problem, f"a record (opcode {op:#04x}) cut short at offset {pos}")
                return scan, pos
            elif op == OP_SCHEMA:
                _parse_schema(scan, f.read(length))
            elif op == OP_CHANNEL:
                _parse_channel(scan, f.read(length))
            elif op == OP_MESSAGE:
                if length < MESSAGE_PREFIX:
                    raise _Damaged(f"a message record of {length} bytes")
                cid, _, log_time, _ = struct.unpack("<HIQQ", f.read(MESSAGE_PREFIX))
                scan.messages.append(_MessageRef(log_time, cid, -1, body_start + MESSAGE_PREFIX, length - 22))
        except _Damaged as exc:
            scan.problem = _also(scan.problem, f"{exc} at offset {pos}")
            return scan, pos
        pos = body_start + length


def _chunk(f: Any, scan: _McapScan, body_start: int, length: int, available: int) -> bool:
    """Index one chunk record (whole or cut); False when the scan must stop here."""
    fixed = f.read(min(available, 32))
    if len(fixed) < 32:
        scan.problem = _also(scan.problem, f"a chunk cut inside its header at offset {body_start - 9}")
        return False
    _, _, uncompressed_size, crc, name_len = struct.unpack("<QQQII", fixed)
    if 32 + name_len + 8 > available:
        scan.problem = _also(scan.problem, f"a chunk cut inside its header at offset {body_start - 9}")
        return False
    try:
        compression = f.read(name_len).decode()
    except UnicodeDecodeError:
        raise _Damaged("a chunk compression name that is not UTF-8") from None
    (records_len,) = struct.unpack("<Q", f.read(8))
    data_offset = body_start + 32 + name_len + 8
    on_disk = min(records_len, body_start + available - data_offset)
    complete = available == length and on_disk == records_len
    chunk = _Chunk(data_offset, on_disk, compression, uncompressed_size, crc, complete)
    index = len(scan.chunks)
    scan.chunks.append(chunk)
    before = len(scan.messages)
    try:
        raw = _decompress(f.read(on_disk), chunk)
        used = _records(memoryview(raw), scan, index, 0)
    except _Damaged as exc:
        del scan.messages[before:]
        if complete:  # framing is intact: skip this chunk, read on
            scan.problem = _also(
                scan.problem, f"{exc}: the chunk at offset {body_start - 9} ({length + 9} bytes) skipped"
            )
            scan.lost = _also(scan.lost, f"that chunk's {uncompressed_size} bytes of records")
            return True
        scan.problem = _also(scan.problem, f"{exc} in the chunk cut at offset {body_start - 9}")
        return False
    if not complete:
        kept = len(scan.messages) - before
        scan.problem = _also(
            scan.problem, f"a chunk cut mid-way (the record at offset {body_start - 9}, {kept} messages read from it)"
        )
        if compression:
            scan.lost = _also(
                scan.lost, f"the last {uncompressed_size - used} of its {uncompressed_size} bytes of records"
            )
        else:
            lost_from = data_offset + used
            scan.lost = _also(
                scan.lost, f"the {body_start + available - lost_from} bytes from offset {lost_from} to the end"
            )
        return False
    return True


class RecoveringMcapReader(McapReader):
    """rosbags' MCAP reader; where it refuses a file (no footer, no summary, a cut summary) the file
    is scanned record by record instead and every complete message is served from that index."""

    def __init__(self, path: Any, log: RecoveryLog) -> None:
        super().__init__(path)
        self._log = log
        self._scan: _McapScan | None = None

    def open(self) -> None:
        try:
            super().open()
            return
        except Exception as exc:  # rosbags: ReaderError, struct/Unicode errors from a cut summary
            refused = first_line(exc)
        try:
            self.bio = Path(self.path).open("rb")  # noqa: SIM115 - held open like rosbags' own, closed in close()
        except OSError as exc:
            raise ReaderError(f"Could not open file {str(self.path)!r}: {exc.strerror}.") from None
        try:
            self._recover(refused)
        except BaseException:
            self.bio.close()
            self.bio = None
            raise

    def _recover(self, refused: str) -> None:
        size = Path(self.path).stat().st_size
        if size == 0:
            raise ReaderError(refused)
        original = Path(self.path).resolve()
        if original not in self._log.mcap_scans:
            self._log.mcap_scans[original] = scan_mcap(self.bio, size)
        scan, end = self._log.mcap_scans[original]
        self._scan = scan
        counts: dict[int, int] = {}
        for m in scan.messages:
            counts[m.channel_id] = counts.get(m.channel_id, 0) + 1
        self.connections = [
            Connection(
                cid,
                topic,
                scan.schemas.get(sid, ("__schemaless__", "", ""))[0],
                _msgdef(scan.schemas.get(sid)),
                "",
                counts.get(cid, 0),
                ConnectionExtRosbag2(encoding, _qos(meta)),
                self,
            )
            for cid, (topic, sid, encoding, meta) in sorted(scan.channels.items())
        ]
        times = [m.log_time for m in scan.messages]
        n = len(times)
        self.metadata = self.metadata._replace(
            duration=max(times) - min(times) + 1 if n else 0,
            start_time=min(times) if n else 2**63 - 1,
            end_time=max(times) + 1 if n else 0,
            message_count=n,
        )
        what = scan.problem or "the MCAP summary or footer is missing or cut (all messages are before it)"
        lost = scan.lost or (f"the {size - end} bytes from offset {end} to the end of the file" if size > end else "")
        if scan.problem and not lost:
            lost = "nothing more on disk"
        self._log.note(Path(self.path), f"{what}; {n} complete messages recovered" + (f", lost {lost}" if lost else ""))

    def close(self) -> None:
        self._scan = None
        super().close()

    def messages(
        self, connections: Collection[Connection], start: int | None = None, stop: int | None = None
    ) -> Iterator[tuple[Connection, int, bytes]]:
        if self._scan is None:
            yield from super().messages(connections, start, stop)
            return
        lo, hi = start if start is not None else 0, stop if stop is not None else 2**63 - 1
        wanted = {c.id: c for c in connections}
        by_chunk: dict[int, list[_MessageRef]] = {}
        for m in self._scan.messages:
            if m.channel_id in wanted and lo <= m.log_time < hi:
                by_chunk.setdefault(m.chunk, []).append(m)
        # As rosbags does: each chunk in time order, chunks merged; a chunk is decompressed only
        # when the merge reaches its first message, so one or two are in memory at a time.
        sources = [self._chunk_messages(k, sorted(refs, key=lambda m: m.log_time)) for k, refs in by_chunk.items()]
        for log_time, _, cid, data in heapq.merge(*sources, key=lambda x: (x[0], x[1])):
            yield wanted[cid], log_time, data

    def _chunk_messages(self, index: int, refs: list[_MessageRef]) -> Iterator[tuple[int, int, int, bytes]]:
        assert self._scan is not None and self.bio is not None
        order = index if index >= 0 else -1
        if index < 0:
            for m in refs:
                self.bio.seek(m.offset)
                yield m.log_time, order, m.channel_id, self.bio.read(m.size)
            return
        chunk = self._scan.chunks[index]
        first = True
        raw = b""
        for m in refs:
            if first:
                first = False
                self.bio.seek(chunk.data_offset)
                raw = _decompress(self.bio.read(chunk.data_size), chunk)
            yield m.log_time, order, m.channel_id, raw[m.offset : m.offset + m.size]


def _msgdef(schema: tuple[str, str, str] | None) -> MessageDefinition:
    if schema is None or schema[1] not in SCHEMA_FORMATS:
        return MessageDefinition(MessageDefinitionFormat.NONE, "")
    return MessageDefinition(SCHEMA_FORMATS[schema[1]], schema[2])


def _qos(meta: bytes) -> list[Any]:
    """Offered QoS from a channel's metadata map; none when it does not parse."""
    try:
        pos = 0
        while pos < len(meta):
            key, pos = _string(meta, pos)
            value, pos = _string(meta, pos)
            if key == "offered_qos_profiles":
                return parse_qos(value)
    except Exception:  # a damaged map or a QoS string rosbags cannot parse: no QoS, not no bag
        return []
    return []


# -- sqlite3 ----------------------------------------------------------------------------------------


def sqlite_truncation(path: Path) -> int:
    """Bytes missing from the end of a ``.db3`` whose header records its size (0 when whole)."""
    with path.open("rb") as f:
        head = f.read(100)
    if len(head) < 100 or not head.startswith(SQLITE_HEADER):
        return 0
    page_size = struct.unpack_from(">H", head, 16)[0]
    page_size = 65536 if page_size == 1 else page_size
    change, pages, valid_for = (struct.unpack_from(">I", head, o)[0] for o in (24, 28, 92))
    if pages == 0 or change != valid_for:  # size field not maintained by the writer
        return 0
    return max(0, pages * page_size - path.stat().st_size)


def _fit_header(copy: Path) -> None:
    """Make a cut copy consistent with its header: whole pages only, and the header's page count
    what is there. SQLite refuses a file shorter than its header says outright; this way it reads
    every page that is on disk and reports damage only where a missing page is needed."""
    with copy.open("r+b") as f:
        head = bytearray(f.read(100))
        page_size = struct.unpack_from(">H", head, 16)[0]
        page_size = 65536 if page_size == 1 else page_size
        pages = copy.stat().st_size // page_size
        f.truncate(pages * page_size)
        struct.pack_into(">I", head, 28, pages)
        f.seek(0)
        f.write(head)


def _uri(path: Path, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{path.resolve().as_uri()}?{query}" if query else path.resolve().as_uri()


def _apply_journal(copy: Path, wal_bytes: int) -> str:
    """Let SQLite replay the committed part of the WAL (or roll back a hot journal) in our copy;
    returns what of the WAL was not committed and so is lost."""
    con = sqlite3.connect(_uri(copy), uri=True)
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()  # runs WAL / journal recovery
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
        # FULL reports the WAL's committed frames (TRUNCATE would report 0 after emptying it).
        _, frames, _ = con.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        con.close()
    if wal_bytes == 0:
        return ""
    if frames < 0:  # not a WAL database; a rolled-back journal
        return "an unfinished transaction in the rollback journal was rolled back"
    used = WAL_HEADER_BYTES + frames * (WAL_FRAME_HEADER_BYTES + page_size) if frames else 0
    lost = wal_bytes - used
    if lost <= 0:
        return ""
    return f"{lost} bytes of the -wal file from offset {used} (an unfinished or half-written transaction) lost"


def _salvage(src: Path, dst: Path) -> tuple[int, str]:
    """Copy every readable row of ``src`` into a new database ``dst``: all small tables, and the
    messages in id order up to the first row SQLite cannot read. Returns (messages, problem)."""
    source = sqlite3.connect(_uri(src, mode="ro", immutable="1"), uri=True)
    target = sqlite3.connect(dst)
    problem, copied = "", 0
    try:
        objects = source.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall()
        tables = [(n, s) for t, n, s in objects if t == "table" and not n.startswith("sqlite_")]
        for _, sql in tables:
            target.execute(sql)
        for name, _ in tables:
            quoted = '"' + name.replace('"', '""') + '"'
            if name == "messages":
                continue
            try:
                rows = source.execute(f"SELECT * FROM {quoted}").fetchall()
            except sqlite3.DatabaseError as exc:
                problem = problem or f"table {name} unreadable ({first_line(exc)})"
                continue
            if rows:
                marks = ",".join("?" * len(rows[0]))
                target.executemany(f"INSERT INTO {quoted} VALUES ({marks})", rows)
        last = -(2**63)
        try:
            for row in source.execute("SELECT * FROM messages WHERE id > ? ORDER BY id", (last,)):
                target.execute(f"INSERT INTO messages VALUES ({','.join('?' * len(row))})", row)
                last, copied = row[0], copied + 1
        except sqlite3.DatabaseError as exc:
            after = f"after message id {last}" if copied else "from the first message on"
            problem = f"unreadable {after} ({first_line(exc)})"
        for kind, _, sql in objects:
            if kind == "index":
                target.execute(sql)
        target.commit()
    finally:
        source.close()
        target.close()
    return copied, problem


class RecoveringSqlite3Reader(Sqlite3Reader):
    """rosbags' sqlite3 reader on a readable version of the file: the file itself when it is whole
    and closed, else a private copy with the WAL's committed transactions applied, or the rows
    salvaged from a damaged one. The recording is only ever opened read-only."""

    def __init__(self, path: Any, log: RecoveryLog) -> None:
        super().__init__(Path(path))
        self._log = log

    def open(self) -> None:
        original = Path(self.path).resolve()
        known = original in self._log.sqlite_copies
        if not known:
            self._log.sqlite_copies[original], note = self._readable(original)
        self.path = self._log.sqlite_copies[original]
        super().open()
        if not known and self.path != original:
            self._log.note(original, f"{note}; {self.metadata.message_count} messages recovered")

    def _readable(self, original: Path) -> tuple[Path, str]:
        sidecars = [s for s in ("-wal", "-journal") if original.with_name(original.name + s).is_file()]
        missing = sqlite_truncation(original) if original.is_file() else 0
        if not sidecars and not missing and self._opens(original):
            return original, ""
        self._log.workdir.mkdir(parents=True, exist_ok=True)
        folder = self._log.workdir / f"db{len(self._log.sqlite_copies)}"
        folder.mkdir()
        copy = folder / original.name
        shutil.copyfile(original, copy)
        for s in sidecars:
            shutil.copyfile(original.with_name(original.name + s), copy.with_name(copy.name + s))
        notes = []
        if missing:
            notes.append(f"cut off, {missing} bytes short of the size its header records")
            _fit_header(copy)
        if sidecars:
            wal = original.with_name(original.name + "-wal")
            try:
                journal = _apply_journal(copy, wal.stat().st_size if wal.is_file() else 0)
                notes.append(f"not closed, {journal or 'every transaction in its -wal file complete'}")
            except sqlite3.DatabaseError as exc:
                notes.append(f"not closed, and its journal could not be applied ({first_line(exc)})")
        if missing or not self._opens(copy):
            salvaged = folder / f"salvaged_{original.name}"
            _, problem = _salvage(copy, salvaged)
            notes.append(problem or "damaged, every row still readable")
            copy = salvaged
        return copy, "; ".join(notes)

    @staticmethod
    def _opens(path: Path) -> bool:
        """rosbags can open it and count its messages (a damaged page fails one of the two)."""
        try:
            reader = Sqlite3Reader(path)
            reader.open()
            reader.close()
        except Exception:  # apsw's errors vary by damage; any of them means salvage
            return False
        return True
