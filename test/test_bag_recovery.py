"""Recordings cut off mid-write: real rosbag2 files written by the project's own writers, cut at many
points (inside a record header, inside a chunk's compressed data, between chunks, inside the
summary), must give back exactly the complete messages before the cut, say on one line what was
lost, and never be written to. The oracle walks the uncut file independently of the reader."""

from __future__ import annotations

import hashlib
import html
import shutil
import sqlite3
import struct
from dataclasses import dataclass, field
from pathlib import Path

import lz4.frame
import numpy as np
import pytest
import yaml

from posenet_ros.bagio import BagError, BagWriter, open_bag
from posenet_ros.geometry import Pose
from posenet_ros.image_codec import encode_image
from posenet_ros.replay import ReplayConfig, replay, write_report
from posenet_train.bags import ToBagConfig, dataset_to_bag
from posenet_train.cli import main as train_main
from posenet_train.synth import SynthConfig, render_dataset

try:
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:
    from backports import zstd

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "posenet_demo.pt"
T0 = 1_700_000_000 * 1_000_000_000
FRAMES = 250  # about 2.4 MB: two full 1 MiB chunks of rosbags' MCAP writer and part of a third


def write_recording(out: Path, storage: str, frames: int = FRAMES, t0: int = T0) -> Path:
    """Camera images (smooth, so zstd/lz4 really compress them), TF and a pose topic, as a robot
    records them, with the project's BagWriter."""
    rng = np.random.default_rng(frames)
    with BagWriter(out, storage) as w:
        w.add_topic("/camera/image_raw", "sensor_msgs/msg/Image")
        w.add_topic("/tf", "tf2_msgs/msg/TFMessage")
        w.add_topic("/ground_truth/camera_pose", "geometry_msgs/msg/PoseStamped")
        ramp = np.add.outer(np.arange(48), np.arange(64))[:, :, None]
        for i in range(frames):
            t = t0 + i * 100_000_000
            pose = Pose(np.array([0.01 * i, 0.0, 1.0]), np.array([1.0, 0.0, 0.0, 0.0]))
            image = (ramp + 3 * i + rng.integers(0, 4, (48, 64, 3))).astype(np.uint8)
            w.write("/tf", t, w.tf_message(t, "map", "base_link", pose))
            w.write("/ground_truth/camera_pose", t, w.pose_stamped(t, "map", pose))
            w.write("/camera/image_raw", t, w.image(t, "camera", encode_image(image, "rgb8")))
    return out


def all_messages(bag: Path, lines: list[str] | None = None) -> list[tuple[str, int, bytes]]:
    with open_bag(bag, warn=(lines.append if lines is not None else lambda _: None)) as reader:
        return [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages(connections=reader.connections)]


def tree_state(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# -- MCAP: an independent walk of the uncut file ----------------------------------------------------


@dataclass
class Chunk:
    start: int  # record offset in the file
    end: int
    data_offset: int  # of the compressed records
    compression: str
    data: bytes


@dataclass
class Layout:
    size: int
    data_end: int  # offset of the DataEnd record
    chunks: list[Chunk] = field(default_factory=list)
    messages: list[tuple[str, int, bytes, int, int]] = field(default_factory=list)  # topic, time, data, chunk, end

    def complete_before(self, cut: int) -> list[tuple[str, int, bytes]]:
        """The messages whose records can be read from the first ``cut`` bytes: whole chunks, and
        in the cut chunk those that its readable part decompresses to."""
        readable = []
        for c in self.chunks:
            if c.end <= cut:
                readable.append(len(decode(c.data, c.compression)))
            elif c.data_offset < cut:
                readable.append(len(partial_decode(c.data[: cut - c.data_offset], c.compression)))
            else:
                readable.append(0)
        return [(topic, t, data) for topic, t, data, k, end in self.messages if end <= readable[k]]


def decode(data: bytes, compression: str) -> bytes:
    return {"": lambda d: d, "zstd": zstd.decompress, "lz4": lz4.frame.decompress}[compression](data)


def partial_decode(data: bytes, compression: str) -> bytes:
    if compression == "":
        return data
    try:
        if compression == "zstd":
            return zstd.ZstdDecompressor().decompress(data)
        return lz4.frame.LZ4FrameDecompressor().decompress(data)
    except Exception:  # a prefix too short for the frame header decodes to nothing
        return b""


def layout_of(buf: bytes) -> Layout:
    pos, channels = 8, {}
    out = Layout(len(buf), 0)
    while True:
        op, n = struct.unpack_from("<BQ", buf, pos)
        body = buf[pos + 9 : pos + 9 + n]
        if op == 0x0F:
            out.data_end = pos
            return out
        if op == 0x06:
            name_len = struct.unpack_from("<I", body, 28)[0]
            compression = body[32 : 32 + name_len].decode()
            (records_len,) = struct.unpack_from("<Q", body, 32 + name_len)
            data = body[40 + name_len : 40 + name_len + records_len]
            out.chunks.append(Chunk(pos, pos + 9 + n, pos + 9 + 40 + name_len, compression, data))
            raw, inner = decode(data, compression), 0
            while inner < len(raw):
                iop, m = struct.unpack_from("<BQ", raw, inner)
                rec = raw[inner + 9 : inner + 9 + m]
                if iop == 0x04:
                    cid, _, topic_len = struct.unpack_from("<HHI", rec)
                    channels[cid] = rec[8 : 8 + topic_len].decode()
                elif iop == 0x05:
                    cid, _, t, _ = struct.unpack_from("<HIQQ", rec)
                    out.messages.append((channels[cid], t, rec[22:], len(out.chunks) - 1, inner + 9 + m))
                inner += 9 + m
        pos += 9 + n


def recompress(buf: bytes, compression: str) -> bytes:
    """The same recording with its chunks compressed (as ``ros2 bag record`` with zstd or lz4 chunk
    compression writes them), up to its data end: what a recorder killed there leaves."""
    parts, pos = [buf[:8]], 8
    while True:
        op, n = struct.unpack_from("<BQ", buf, pos)
        body = buf[pos + 9 : pos + 9 + n]
        if op == 0x06:
            name_len = struct.unpack_from("<I", body, 28)[0]
            (records_len,) = struct.unpack_from("<Q", body, 32 + name_len)
            raw = body[40 + name_len : 40 + name_len + records_len]
            packed = zstd.compress(raw) if compression == "zstd" else lz4.frame.compress(raw)
            name = compression.encode()
            body = body[:28] + struct.pack("<I", len(name)) + name + struct.pack("<Q", len(packed)) + packed
        parts.append(struct.pack("<BQ", op, len(body)) + body)
        if op == 0x0F:
            return b"".join(parts)
        pos += 9 + n


def cut_points(lay: Layout) -> list[int]:
    cuts = {8 + 4, 8 + 9 + 3, int(0.6 * lay.size), lay.data_end, lay.data_end + 5, lay.size - 10, lay.size}
    for c in lay.chunks:
        third = len(c.data) // 3
        cuts |= {c.start, c.start + 4, c.start + 9 + 20, c.data_offset + 2, c.data_offset + third}
        cuts |= {c.data_offset + 2 * third, c.end - 1, c.end + 5}
    return sorted(x for x in cuts if 8 < x <= lay.size)


@pytest.fixture(scope="module")
def mcap_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    bag = write_recording(tmp_path_factory.mktemp("rec") / "bag", "mcap")
    return next(bag.glob("*.mcap")).read_bytes()


@pytest.mark.parametrize("compression", ["", "zstd", "lz4"])
def test_mcap_cut_anywhere_gives_back_exactly_the_complete_messages(
    mcap_file: bytes, tmp_path: Path, compression: str
) -> None:
    buf = recompress(mcap_file, compression) if compression else mcap_file
    lay = layout_of(buf)
    assert len(lay.chunks) == 3 and all(c.compression == compression for c in lay.chunks)
    assert len(lay.messages) == 3 * FRAMES
    if compression:
        assert sum(len(c.data) for c in lay.chunks) < 0.95 * sum(len(decode(c.data, compression)) for c in lay.chunks)
    cuts = cut_points(lay)
    recovered_counts = []
    for cut in cuts:
        folder = tmp_path / f"cut_{cut}"
        folder.mkdir()
        (folder / "recording_0.mcap").write_bytes(buf[:cut])
        before = tree_state(folder)
        lines: list[str] = []
        got = all_messages(folder, lines)
        expected = sorted(lay.complete_before(cut), key=lambda m: m[1])
        assert got == expected, f"cut at {cut} of {len(buf)}"
        recovered_counts.append(len(got))
        if cut == len(buf) and not compression:
            assert lines == []  # the whole file, footer and all: nothing to say
        else:
            assert len(lines) == 1 and "\n" not in lines[0] and "recording_0.mcap" in lines[0], lines
            assert f"{len(got)} complete messages recovered" in lines[0]
        assert tree_state(folder) == before  # nothing written into the recording
    assert recovered_counts == sorted(recovered_counts) and recovered_counts[-1] == 3 * FRAMES
    # A cut two thirds into the middle chunk's data keeps part of that chunk, not none and not all.
    middle = lay.chunks[1]
    n0, n01 = (sum(1 for m in lay.messages if m[3] <= k) for k in (0, 1))
    assert n0 < recovered_counts[cuts.index(middle.data_offset + 2 * (len(middle.data) // 3))] < n01


def test_mcap_cut_inside_a_metadata_listed_file_and_the_summary(mcap_file: bytes, tmp_path: Path) -> None:
    """A rosbag2 folder with its metadata.yaml (the recorder closed, the copy was cut): the same
    recovery through rosbags' folder reader; a cut inside the summary loses no message."""
    bag = write_recording(tmp_path / "bag", "mcap")
    storage = next(bag.glob("*.mcap"))
    whole = storage.read_bytes()
    lay = layout_of(whole)
    for cut, count in ((lay.data_end + 20, 3 * FRAMES), (int(0.6 * len(whole)), None)):
        storage.write_bytes(whole[:cut])
        lines: list[str] = []
        got = all_messages(bag, lines)
        assert got == sorted(lay.complete_before(cut), key=lambda m: m[1])
        assert count is None or len(got) == count
        assert len(lines) == 1


def test_replay_and_from_bag_recover_a_recording_cut_at_60_percent(tmp_path: Path, capsys) -> None:
    """The issue's case: ``posenet-ros replay`` used to refuse it whole ('File end magic is
    invalid'); now every complete image before the cut is localized and one line says what was lost."""
    data = tmp_path / "scene"
    render_dataset(
        SynthConfig(train_sequences=0, test_sequences=1, frames_per_sequence=40, width=128, height=96), data, False
    )
    bag = tmp_path / "bag"
    dataset_to_bag(ToBagConfig(data, bag, storage="mcap"))
    storage = next(bag.glob("*.mcap"))
    whole = storage.read_bytes()
    lay = layout_of(whole)
    (bag / "metadata.yaml").unlink()  # killed: no metadata either
    storage.write_bytes(whole[: int(0.6 * len(whole))])
    images = [m for m in lay.complete_before(int(0.6 * len(whole))) if m[0] == "/camera/image_raw"]
    assert 0 < len(images) < 40
    result = replay(ReplayConfig(bag, MODEL, device="cpu", progress=False))
    assert result.summary["frames_read"] == result.summary["frames_processed"] == len(images)
    assert result.read_error is None
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "chunk cut mid-way" in warnings[0]
    # The report says it too: a reader of index.html did not see the terminal.
    assert result.summary["recording_damage"] == [warnings[0].removeprefix("warning: ")]
    index = write_report(result, tmp_path / "report").read_text()
    assert html.escape(result.summary["recording_damage"][0]) in index
    out = tmp_path / "from_bag"
    args = ["from-bag", str(bag), "--out", str(out), "--gt-frames", "map", "camera_optical"]
    assert train_main(args) == 0
    assert len((out / "poses.csv").read_text().splitlines()) == len(images) + 1


# -- sqlite3 ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def closed_db3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return next(write_recording(tmp_path_factory.mktemp("db") / "bag", "sqlite3", frames=60).glob("*.db3"))


def record_unclosed(closed: Path, folder: Path, per_commit: int = 3) -> tuple[list[int], int]:
    """What ``ros2 bag record`` with the resilient preset (WAL journal) leaves when it is killed:
    the .db3 and its -wal, no metadata.yaml. Rows are those of a closed recording, committed
    ``per_commit`` at a time; returns the WAL size after each commit and the number of rows."""
    live = folder.parent / f"{folder.name}_live"
    live.mkdir()
    con = sqlite3.connect(live / "rec_0.db3", isolation_level=None)
    con.execute("ATTACH ? AS src", (str(closed),))
    for (sql,) in con.execute("SELECT sql FROM src.sqlite_master WHERE type IN ('table', 'index')").fetchall():
        con.execute(sql.replace("CREATE INDEX ", "CREATE INDEX main."))
    for table in ("schema", "topics", "message_definitions"):
        con.execute(f"INSERT INTO {table} SELECT * FROM src.{table}")
    rows = con.execute("SELECT * FROM src.messages ORDER BY id").fetchall()
    con.execute("DETACH src")
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")  # everything stays in the WAL, as on a kill
    sizes = []
    for i in range(0, len(rows), per_commit):
        con.execute("BEGIN")
        con.executemany("INSERT INTO messages VALUES (?, ?, ?, ?)", rows[i : i + per_commit])
        con.execute("COMMIT")
        sizes.append((live / "rec_0.db3-wal").stat().st_size)
    folder.mkdir()
    for name in ("rec_0.db3", "rec_0.db3-wal"):  # the files as they are on disk at the kill
        shutil.copyfile(live / name, folder / name)
    con.close()
    return sizes, len(rows)


def test_sqlite_never_closed_gives_back_every_committed_message(closed_db3: Path, tmp_path: Path) -> None:
    rows = all_messages(closed_db3)
    sizes, n = record_unclosed(closed_db3, tmp_path / "rec")
    assert n == len(rows) == 180 and sizes == sorted(sizes)
    wal = tmp_path / "rec" / "rec_0.db3-wal"
    whole = wal.read_bytes()
    page = 24 + 4096
    cuts = {10, 32, 40, sizes[0] - 1, sizes[0], sizes[0] + 5, sizes[10] + page // 2, sizes[-2] + 1}
    cuts |= {sizes[-1] - 100, sizes[-1] - page - 3, sizes[-1]}
    for cut in sorted(cuts):
        wal.write_bytes(whole[:cut])
        before = tree_state(tmp_path / "rec")
        lines: list[str] = []
        got = all_messages(tmp_path / "rec", lines)
        committed = 3 * sum(1 for s in sizes if s <= cut)
        assert got == rows[:committed], f"WAL cut at {cut}"
        assert len(lines) == 1 and "rec_0.db3: not closed" in lines[0] and f"{committed} messages recovered" in lines[0]
        if cut < sizes[-1]:
            lost = cut - max([s for s in sizes if s <= cut], default=0)
            assert f"{lost} bytes of the -wal file" in lines[0] or lost == 0
        assert tree_state(tmp_path / "rec") == before and not (tmp_path / "rec" / "rec_0.db3-shm").exists()


def test_sqlite_cut_short_gives_back_the_rows_before_the_damage(closed_db3: Path, tmp_path: Path) -> None:
    """A .db3 cut short (a copy interrupted, a disk full): the rows SQLite can still reach, in order
    and byte for byte; more of the file never gives fewer."""
    rows = all_messages(closed_db3)
    whole = closed_db3.read_bytes()
    counts = []
    for fraction in (0.05, 0.3, 0.6, 0.9, 0.999):
        folder = tmp_path / f"cut_{fraction}"
        folder.mkdir()
        (folder / "rec_0.db3").write_bytes(whole[: int(fraction * len(whole))])
        lines: list[str] = []
        got = all_messages(folder, lines)
        ids = [rows.index(m) for m in got]
        assert ids == list(range(len(got)))  # a prefix of the recording
        assert len(lines) == 1 and "bytes short of the size its header records" in lines[0]
        assert f"{len(got)} messages recovered" in lines[0]
        counts.append(len(got))
    assert counts == sorted(counts) and 0 < counts[2] < len(rows) and counts[-1] >= len(rows) - 6


# -- split recordings --------------------------------------------------------------------------------


@pytest.mark.parametrize("with_metadata", [False, True])
def test_split_recording_with_one_damaged_file(tmp_path: Path, with_metadata: bool) -> None:
    """rosbag2 splits a long recording into NAME_0, NAME_1, ...; one damaged file costs only its own
    lost part. Without metadata.yaml (killed recorder) the files are taken in split order."""
    parts = [write_recording(tmp_path / f"part{k}", "mcap", frames=120, t0=T0 + k * 10**11) for k in range(3)]
    folder = tmp_path / "split"
    folder.mkdir()
    names = [f"split_{k}.mcap" for k in (0, 1, 2)]
    for part, name in zip(parts, names, strict=True):
        shutil.copyfile(next(part.glob("*.mcap")), folder / name)
    damaged = 0 if with_metadata else 2  # a middle-of-the-list file, or the file being written at the kill
    whole = (folder / names[damaged]).read_bytes()
    cut = int(0.55 * len(whole))
    (folder / names[damaged]).write_bytes(whole[:cut])
    if with_metadata:
        meta = yaml.safe_load((parts[0] / "metadata.yaml").read_text())
        info = meta["rosbag2_bagfile_information"]
        info["relative_file_paths"] = names
        info["message_count"] *= 3
        for entry in info["topics_with_message_count"]:
            entry["message_count"] *= 3
        (folder / "metadata.yaml").write_text(yaml.safe_dump(meta))
    expected = []
    for k, part in enumerate(parts):
        lay = layout_of(next(part.glob("*.mcap")).read_bytes())
        expected += sorted(lay.complete_before(cut if k == damaged else lay.size), key=lambda m: m[1])
    lines: list[str] = []
    got = all_messages(folder, lines)
    assert got == expected and 0 < len(got) < 3 * 360
    assert len(lines) == 1 and names[damaged] in lines[0]
    assert not any(n in lines[0] for i, n in enumerate(names) if i != damaged)


def test_unreadable_recordings_are_still_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.mcap").write_bytes(b"")
    (tmp_path / "foreign.mcap").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    for name in ("empty.mcap", "foreign.mcap"):
        with pytest.raises(BagError, match=f"cannot read bag .*{name}") as err, open_bag(tmp_path / name):
            pass
        assert "\n" not in str(err.value)
