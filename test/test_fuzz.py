"""Fuzzing the inputs a robot or a user hands us: each target may only succeed or raise the
project's own one-line error type, never anything else. A short fixed budget runs with the suite;
POSENET_FUZZ_EXAMPLES=N (``make fuzz``) runs N examples per target."""

from __future__ import annotations

import array
import contextlib
import os
import struct
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from posenet_ros.bagio import BagError, BagWriter, open_bag, read_messages
from posenet_ros.contract import Contract, ContractError
from posenet_ros.engine import EngineError, load_model
from posenet_ros.geometry import Pose
from posenet_ros.groundtruth import pose_of_message
from posenet_ros.image_codec import ImageDecodeError, decode, encode_compressed
from posenet_ros.preprocess import ENCODINGS
from posenet_train.datasets import DatasetError, convert, read_poses_csv

EXAMPLES = int(os.environ.get("POSENET_FUZZ_EXAMPLES", "40"))
# The suite's short run is the same every time; a longer ``make fuzz`` run explores anew.
DERANDOMIZE = "POSENET_FUZZ_EXAMPLES" not in os.environ
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=DERANDOMIZE)
REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "models" / "posenet_demo.pt"


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    """Overwrite bytes at (position, value) pairs, then optionally cut."""
    buf = bytearray(data)
    for pos, value in edits:
        if buf:
            buf[pos % len(buf)] = value
    return bytes(buf[:cut] if cut is not None else buf)


edits = st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), max_size=8)
cuts = st.one_of(st.none(), st.integers(0, 4096))


# -- sensor_msgs/Image and CompressedImage ----------------------------------------------------------

encodings = st.one_of(st.sampled_from(sorted(ENCODINGS)), st.sampled_from(["16UC1", "yuv422", "32FC1", ""]), st.text())
sizes = st.one_of(st.integers(0, 64), st.integers(0, 8192), st.integers(-(2**31), 2**32))
image_data = st.one_of(
    st.binary(max_size=4096),
    st.binary(max_size=4096).map(bytearray),
    st.binary(max_size=4096).map(lambda b: array.array("B", b)),
    st.binary(max_size=4096).map(lambda b: np.frombuffer(b, np.uint8)),
    st.integers(0, 512).map(lambda n: np.arange(n, dtype=np.uint16)[::2]),
    st.integers(0, 64).map(lambda n: np.array([object()] * n)),
    st.sampled_from([None, 7, "text", [1, 2, 3]]),
)


@FUZZ
@given(encodings, sizes, sizes, sizes, st.integers(-5, 300), image_data)
@example("bgr8", 1, 1, 3, 0, np.array([0, 1, 2, 3], np.uint16)[::2])  # crashed: strided uint16 data
@example("rgb8", 1, 1, 3, 0, np.array([object()] * 3))  # crashed: object array
def test_image_messages_decode_or_raise_image_decode_error(encoding, height, width, step, bigendian, data) -> None:
    msg = SimpleNamespace(encoding=encoding, height=height, width=width, step=step, is_bigendian=bigendian, data=data)
    try:
        image, enc = decode(msg)
    except ImageDecodeError as exc:
        assert "\n" not in str(exc)
        return
    assert image.shape == (height, width, ENCODINGS[enc][0]) and image.dtype == np.uint8


def _valid_compressed(kind: str) -> bytes:
    img = np.add.outer(np.arange(24), np.arange(32)).astype(np.uint8)
    return encode_compressed(np.dstack([img, img[::-1], img.T[:24, :32] if False else img]), kind)


@FUZZ
@given(st.sampled_from(["jpeg", "png"]), edits, cuts, st.text(max_size=20))
@example("jpeg", [(0, 0)], None, "jpeg\n")  # a newline in the format made the error two lines
def test_compressed_images_decode_or_raise_image_decode_error(kind, changes, cut, fmt) -> None:
    data = mutate(_valid_compressed(kind), changes, cut)
    try:
        image, enc = decode(SimpleNamespace(format=fmt, data=np.frombuffer(data, np.uint8)))
    except ImageDecodeError as exc:
        assert "\n" not in str(exc)
        return
    assert image.dtype == np.uint8 and image.shape[2] == ENCODINGS[enc][0]


@FUZZ
@given(st.binary(max_size=2048), st.text(max_size=10))
def test_random_bytes_as_compressed_image(data, fmt) -> None:
    with contextlib.suppress(ImageDecodeError):
        decode(SimpleNamespace(format=fmt, data=data))


# -- CDR of every message type we read from bags ----------------------------------------------------


@pytest.fixture(scope="module")
def cdr_samples(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, dict[str, bytes]]:
    w = BagWriter(tmp_path_factory.mktemp("cdr") / "bag")
    pose = Pose(np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.5, 0.5, 0.5]))
    stamp = 1_700_000_000_123_456_789
    img = np.zeros((4, 6, 3), np.uint8)
    msgs = {
        "sensor_msgs/msg/Image": w.image(stamp, "cam", SimpleNamespace(**_raw(img))),
        "sensor_msgs/msg/CompressedImage": w.compressed_image(stamp, "cam", "jpeg", encode_compressed(img)),
        "tf2_msgs/msg/TFMessage": w.tf_message(stamp, "map", "base", pose),
        "geometry_msgs/msg/PoseStamped": w.pose_stamped(stamp, "map", pose),
        "geometry_msgs/msg/PoseWithCovarianceStamped": w.pose_with_covariance_stamped(stamp, "map", pose, [0.1] * 36),
    }
    w.close()
    return w.typestore, {t: bytes(w.typestore.serialize_cdr(m, t)) for t, m in msgs.items()}


def _raw(img: np.ndarray) -> dict[str, object]:
    h, wd = img.shape[:2]
    return {"height": h, "width": wd, "encoding": "rgb8", "is_bigendian": 0, "step": wd * 3, "data": img.tobytes()}


@FUZZ
@given(st.data())
def test_mutated_cdr_deserializes_to_a_usable_message_or_is_counted(cdr_samples, data) -> None:
    """What ``read_messages`` does with a corrupt payload: rosbags raises, the message is counted
    as undecodable. Whatever does deserialize must then decode or give our own errors."""
    typestore, samples = cdr_samples
    msgtype = data.draw(st.sampled_from(sorted(samples)))
    raw = mutate(samples[msgtype], data.draw(edits), data.draw(cuts))
    try:
        msg = typestore.deserialize_cdr(raw, msgtype)
    except Exception:  # read_messages catches every deserialization failure and counts the frame
        return
    if msgtype.startswith("sensor_msgs"):
        with contextlib.suppress(ImageDecodeError):
            decode(msg)
    elif msgtype == "tf2_msgs/msg/TFMessage":
        for t in msg.transforms:
            assert pose_of_message(t) is None or isinstance(pose_of_message(t), Pose)
    else:
        assert pose_of_message(msg) is None or isinstance(pose_of_message(msg), Pose)


@FUZZ
@given(st.binary(max_size=512), st.sampled_from(["geometry_msgs/msg/PoseStamped", "sensor_msgs/msg/Image"]))
def test_random_cdr_bytes(cdr_samples, raw, msgtype) -> None:
    typestore, _ = cdr_samples
    try:
        msg = typestore.deserialize_cdr(raw, msgtype)
    except Exception:
        return
    if msgtype == "sensor_msgs/msg/Image":
        with contextlib.suppress(ImageDecodeError):
            decode(msg)
    else:
        pose_of_message(msg)


# -- bags: mutated metadata.yaml and storage files ---------------------------------------------------


@pytest.fixture(scope="module")
def small_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bag") / "bag"
    with BagWriter(out, "mcap") as w:
        w.add_topic("/tf", "tf2_msgs/msg/TFMessage")
        for i in range(5):
            w.write("/tf", i, w.tf_message(i, "map", "base", Pose(np.zeros(3), np.array([1.0, 0, 0, 0]))))
    return out


def _read_everything(bag: Path) -> None:
    """Every message through ``read_messages``, as replay and from-bag read them."""
    try:
        with open_bag(bag, warn=lambda _: None) as reader:
            for m in read_messages(reader, sorted({c.topic for c in reader.connections})):
                assert (m.msg is None) == bool(m.error)
    except BagError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(edits, cuts)
def test_mutated_metadata_yaml_is_read_or_a_bag_error(small_bag, tmp_path_factory, changes, cut) -> None:
    bag = tmp_path_factory.mktemp("meta")
    (bag / "bag.mcap").write_bytes((small_bag / "bag.mcap").read_bytes())
    (bag / "metadata.yaml").write_bytes(mutate((small_bag / "metadata.yaml").read_bytes(), changes, cut))
    _read_everything(bag)


@FUZZ
@given(edits, st.one_of(st.none(), st.integers(0, 2**16)))
def test_mutated_mcap_is_read_or_a_bag_error(small_bag, tmp_path_factory, changes, cut) -> None:
    bag = tmp_path_factory.mktemp("mcap")
    (bag / "rec.mcap").write_bytes(mutate((small_bag / "bag.mcap").read_bytes(), changes, cut))
    _read_everything(bag / "rec.mcap")


# -- model files -----------------------------------------------------------------------------------


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10,
)


def _paths(d: object, prefix: tuple = ()) -> list[tuple]:
    if isinstance(d, dict):
        return [prefix] + [p for k, v in d.items() for p in _paths(v, (*prefix, k))]
    if isinstance(d, list):
        return [prefix] + [p for i, v in enumerate(d) for p in _paths(v, (*prefix, i))]
    return [prefix]


@FUZZ
@given(st.data())
def test_mutated_contract_is_valid_or_a_contract_error(data) -> None:
    doc = Contract().to_dict()
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)[1:]))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()):
            parent[path[-1]] = data.draw(json_values)
        else:
            del parent[path[-1]]
    try:
        contract = Contract.from_dict(doc)
    except ContractError as exc:
        assert "\n" not in str(exc)
        return
    assert Contract.from_json(contract.to_json()) == contract


@FUZZ
@given(st.binary(max_size=300))
def test_contract_json_bytes(raw) -> None:
    with contextlib.suppress(ContractError):
        Contract.from_json(raw)


@pytest.fixture(scope="module")
def demo_bytes() -> bytes:
    return DEMO_MODEL.read_bytes()


@settings(
    max_examples=max(4, EXAMPLES // 8), deadline=None, suppress_health_check=list(HealthCheck), derandomize=DERANDOMIZE
)
@given(st.sampled_from([".pt", ".onnx"]), st.integers(0, 2**31), edits)
def test_truncated_or_mutated_model_files_are_model_load_errors(demo_bytes, tmp_path_factory, suffix, cut, changes):
    path = tmp_path_factory.mktemp("model") / f"model{suffix}"
    path.write_bytes(mutate(demo_bytes, changes, cut % len(demo_bytes)))
    try:
        load_model(path)
    except EngineError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(st.binary(max_size=256))
def test_foreign_model_files_are_model_load_errors(tmp_path_factory, raw) -> None:
    path = tmp_path_factory.mktemp("foreign") / "model.pt"
    path.write_bytes(raw)
    with contextlib.suppress(EngineError):
        load_model(path)


# -- data set files ----------------------------------------------------------------------------------

csv_lines = st.lists(
    st.lists(
        st.one_of(st.sampled_from(["a.png", "train", "test", "1", "0", "0.5", "nan", "-1e309", ""]), st.text())
    ).map(lambda cells: ",".join(cells)),
    max_size=5,
)


@FUZZ
@given(csv_lines, st.booleans(), st.booleans(), st.binary(max_size=16))
def test_canonical_csv_reads_or_raises_dataset_error(tmp_path_factory, lines, bom, crlf, junk) -> None:
    root = tmp_path_factory.mktemp("csv")
    cv2.imwrite(str(root / "a.png"), np.zeros((4, 4, 3), np.uint8))
    eol = "\r\n" if crlf else "\n"
    text = eol.join(["image,split,x,y,z,qw,qx,qy,qz", "a.png,train,0,0,0,1,0,0,0", *lines]) + eol
    (root / "poses.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode() + junk)
    try:
        records = read_poses_csv(root)
    except DatasetError as exc:
        assert "\n" not in str(exc)
        return
    assert records and all(abs(np.linalg.norm(r.quaternion) - 1) < 1e-12 for r in records)


cambridge_line = st.lists(
    st.one_of(st.sampled_from(["seq1/f.png", "1", "0", "-0.5", "nan", "1e400", "x"]), st.text(max_size=6)), max_size=10
).map(" ".join)


@FUZZ
@given(st.sampled_from(["cambridge", "colmap", "7scenes"]), st.lists(cambridge_line, max_size=6), st.booleans())
def test_dataset_input_formats_convert_or_raise_dataset_error(tmp_path_factory, fmt, lines, crlf) -> None:
    root = tmp_path_factory.mktemp(fmt)
    eol = "\r\n" if crlf else "\n"
    for name in ("seq1/f.png", "images/f.png", "seq-01/frame-000000.color.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name), np.zeros((4, 4, 3), np.uint8))
    body = eol.join(lines) + eol
    if fmt == "cambridge":
        (root / "dataset_train.txt").write_text(f"h{eol}h{eol}h{eol}seq1/f.png 0 0 0 1 0 0 0{eol}" + body)
        (root / "dataset_test.txt").write_text(f"h{eol}h{eol}h{eol}" + body)
    elif fmt == "colmap":
        (root / "images.txt").write_text(f"1 1 0 0 0 0 0 0 1 f.png{eol}{eol}" + body)
    else:
        (root / "TrainSplit.txt").write_text(f"sequence1{eol}")
        (root / "TestSplit.txt").write_text(f"sequence1{eol}")
        (root / "seq-01" / "frame-000000.pose.txt").write_text(body)
    try:
        convert(root, fmt, root / "out")
    except DatasetError as exc:
        assert "\n" not in str(exc)


def test_a_ground_truth_sample_that_is_no_pose_is_skipped(tmp_path: Path) -> None:
    """A zero quaternion in one pose message (a driver's placeholder, a corrupt sample) used to raise
    ValueError out of GroundTruth and end the replay; now that sample is skipped."""
    from posenet_ros.groundtruth import GroundTruth, GroundTruthSource

    with BagWriter(tmp_path / "bag", "mcap") as w:
        w.add_topic("/gt", "geometry_msgs/msg/PoseStamped")
        good = Pose(np.array([1.0, 0, 0]), np.array([1.0, 0, 0, 0]))
        w.write("/gt", 1, w.pose_stamped(1, "map", good))
        bad = w.pose(good)
        bad.orientation.w = 0.0
        w.write("/gt", 2, w.msg("geometry_msgs/msg/PoseStamped", header=w.header(2, "map"), pose=bad))
        w.write("/gt", 3, w.pose_stamped(3, "map", good))
    with open_bag(tmp_path / "bag") as reader:
        truth = GroundTruth(reader, GroundTruthSource(topic="/gt"))
    assert len(truth.track) == 2 and truth.at(3).position.tolist() == [1.0, 0.0, 0.0]


def test_the_budget_follows_the_environment() -> None:
    assert FUZZ.max_examples == EXAMPLES > 0
    assert struct.calcsize("<I") == 4  # CDR and MCAP lengths are read as 4-byte little-endian


# -- every CLI command with random argument values ------------------------------------------------------
#
# Each command of posenet-ros (but live, which needs ROS, and bench) and posenet-train is called in
# this process with random values for random options: numbers (negative, NaN, inf, huge), text, paths
# that do not exist, existing files of the wrong kind, empty strings. The only outcomes allowed are
# exit 0, 1 or 2 with a failure reported as one line on stderr: never an exception, a traceback or an
# "internal error". The work that grows with the values (training, rendering, sampling, SfM, playing
# in real time) is stubbed to stop the command once it is past its checks; the rest runs for real on
# a two-frame data set, its bag and a tiny model.


class _ReachedLongWork(BaseException):
    """Raised by a stubbed long step: the command accepted its arguments (not an Exception, so no
    handler of the command can take it for an error)."""


def _stop(*args: object, **kwargs: object) -> None:
    raise _ReachedLongWork


def _cli_stubs() -> list[tuple[object, str]]:
    import posenet_train.scene_map
    import posenet_train.sfm
    import posenet_train.synth
    import posenet_train.train
    import posenet_train.uncertainty

    return [
        (posenet_train.train, "fit"),
        (posenet_train.synth, "render_dataset"),
        (posenet_train.uncertainty, "predict"),
        (posenet_train.uncertainty, "calibrate"),
        (posenet_train.sfm, "label_sfm"),
        (posenet_train.scene_map, "build_map"),
    ]


@pytest.fixture(scope="module")
def cli_world(tmp_path_factory, tiny_file) -> dict[str, Path]:
    """Real inputs of every kind a command takes, each tiny, and files of the wrong kind."""
    import torch

    from posenet_ros.onnx_export import export_onnx
    from posenet_train.bags import ToBagConfig, dataset_to_bag
    from posenet_train.synth import SynthConfig, render_dataset

    root = tmp_path_factory.mktemp("cli_world")
    scene = root / "scene"
    render_dataset(
        SynthConfig(train_sequences=1, test_sequences=1, frames_per_sequence=2, width=32, height=24), scene, False
    )
    dataset_to_bag(ToBagConfig(scene, root / "bag", storage="mcap"))
    torch.save({"config": {}, "model": {}, "optimizer": {}, "normalization": {}, "step": 1}, root / "checkpoint.pt")
    (root / "notes.txt").write_text("not a model, not a data set\n")
    (root / "empty.pt").write_bytes(b"")
    (root / "empty_dir").mkdir()
    onnx = export_onnx(tiny_file[0], root / "tiny.onnx")
    return {
        "onnx": onnx,
        "scene": scene,
        "bag": root / "bag",
        "model": tiny_file[0],
        "checkpoint": root / "checkpoint.pt",
        "notes": root / "notes.txt",
        "empty_file": root / "empty.pt",
        "empty_dir": root / "empty_dir",
        "poses_csv": scene / "poses.csv",
        "image": next((scene / "seq-01").iterdir()),
    }


CLI_NUMBERS = st.one_of(
    st.integers(-3, 12).map(str),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "-nan", "inf", "-inf", "1e308", "-1e308", "1e-300", "-0", "0.0", "1e999", "0x10"]),
)


# What a positional or an option of this name is meant to get: the value that lets the command go on.
CLI_GOOD_PATHS = {
    "model": ("model", "onnx", "checkpoint"),
    "checkpoint": ("checkpoint",),
    "dataset": ("scene",),
    "data": ("scene",),
    "src": ("scene",),
    "ood": ("scene",),
    "align_to": ("poses_csv",),
    "bag": ("bag",),
    "source": ("bag", "scene"),
    "calibration": ("bag", "scene"),
}
CLI_GOOD_TEXT = {
    "gt_frames": ("map", "base_link", "camera_optical"),
    "gt_topic": ("/ground_truth/camera_pose", "/camera/image_raw"),
    "image_topic": ("/camera/image_raw", "/ground_truth/camera_pose", "/tf"),
    "launch_arg": ("a:=b",),
}
CLI_GOOD = {
    int: st.one_of(st.integers(-2, 6), st.integers(-(2**70), 2**70)).map(str),
    float: st.one_of(st.sampled_from(["0.5", "1", "2.0", "0.01", "30", "-1", "0"]), CLI_NUMBERS),
}


def _cli_value(draw, action: object, world: dict[str, Path], fresh: Path, bad_odds: int) -> str:
    """One value for an option or a positional: mostly one it is meant to get (so the command goes
    on to its next check), else anything: a number of any size, text, a path of the wrong kind."""
    paths = [str(p) for p in world.values()] + [str(fresh), str(fresh / "new.pt"), str(fresh / "new.onnx")]
    paths += [str(fresh / "no" / "such" / "file"), "", "nowhere"]
    dest = getattr(action, "dest", "")
    typed = getattr(action, "type", None)
    choices = getattr(action, "choices", None)
    if bad_odds and draw(st.sampled_from(range(bad_odds))) == 0:
        return draw(st.one_of(st.text(max_size=10), st.just(""), CLI_NUMBERS, st.sampled_from(paths)))
    if choices:
        return draw(st.sampled_from(sorted(choices)))
    if typed in CLI_GOOD:
        return draw(CLI_GOOD[typed])
    if dest in CLI_GOOD_TEXT:
        return draw(st.sampled_from(CLI_GOOD_TEXT[dest]))
    if dest in CLI_GOOD_PATHS:
        return str(world[draw(st.sampled_from(CLI_GOOD_PATHS[dest]))])
    if dest in ("out", "export", "report", "json", "node_log"):
        name = draw(st.sampled_from(["run", "new.pt", "new.onnx", "bag"]))
        return name if draw(SOMETIMES) else str(fresh / name)  # a relative path lands in fresh too
    return draw(st.one_of(st.sampled_from(paths), st.text(max_size=10)))


MOSTLY = st.sampled_from([True] * 9 + [False])
SOMETIMES = st.sampled_from([True, False, False, False])


@st.composite
def cli_argv(draw, parser, command: str, world: dict[str, Path], fresh: Path) -> list[str]:
    import argparse

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    argv = [command]
    bad_odds = draw(st.sampled_from([0, 0, 8, 3]))  # 1 in bad_odds values is anything (0: none)
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings:
            if draw(MOSTLY):  # now and then a positional is missing
                argv.append(_cli_value(draw, action, world, fresh, bad_odds))
            continue
        if not (action.required and draw(MOSTLY)) and not draw(SOMETIMES):
            continue
        flag = draw(st.sampled_from(action.option_strings))
        if action.nargs == 0:
            argv.append(flag)
            continue
        count = action.nargs if isinstance(action.nargs, int) else 1
        values = [_cli_value(draw, action, world, fresh, bad_odds) for _ in range(count)]
        if any(v.startswith("-") for v in values) and count == 1 and draw(st.booleans()):
            argv.append(f"{flag}={values[0]}")
        else:
            argv += [flag, *values]
    return argv


def _run_cli(main, argv: list[str], capsys) -> None:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse itself: its mistakes (2) and nothing else
        code = exc.code
    except _ReachedLongWork:
        return
    _, err = capsys.readouterr()
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err and "internal error" not in err, (argv, err)
    if code != 0:  # the error is the one line on stderr, after any progress bar (drawn with \r)
        lines = [line for line in err.strip().split("\n") if "\r" not in line]
        assert len(lines) == 1 and ": error: " in lines[0], (argv, err)


ROS_FUZZ_COMMANDS = ("replay", "export-onnx", "info")
TRAIN_FUZZ_COMMANDS = (
    "convert",
    "synth",
    "fit",
    "export",
    "eval",
    "calibrate",
    "to-bag",
    "from-bag",
    "label-sfm",
    "map",
)
CLI_FUZZ = settings(
    max_examples=max(4, EXAMPLES // 4), deadline=None, suppress_health_check=list(HealthCheck), derandomize=DERANDOMIZE
)


def _fuzz_cli(main, parser, command: str, world, tmp_path_factory, monkeypatch, capsys, data) -> None:
    for module, name in _cli_stubs():
        monkeypatch.setattr(module, name, _stop)
    fresh = tmp_path_factory.mktemp("cli_fuzz")
    argv = data.draw(cli_argv(parser, command, world, fresh))
    if command == "replay" and "--realtime" in argv:  # plays at the recorded rate times --rate
        import posenet_ros.replay

        monkeypatch.setattr(posenet_ros.replay, "replay", _stop)
    with contextlib.chdir(fresh):  # relative outputs (and eval's default out/) land here
        _run_cli(main, argv, capsys)


@pytest.mark.parametrize("command", ROS_FUZZ_COMMANDS)
@CLI_FUZZ
@given(data=st.data())
def test_posenet_ros_commands_with_random_arguments(command, cli_world, tmp_path_factory, monkeypatch, capsys, data):
    from posenet_ros import cli

    _fuzz_cli(cli.main, cli.build_parser(), command, cli_world, tmp_path_factory, monkeypatch, capsys, data)


@pytest.mark.parametrize("command", TRAIN_FUZZ_COMMANDS)
@CLI_FUZZ
@given(data=st.data())
def test_posenet_train_commands_with_random_arguments(command, cli_world, tmp_path_factory, monkeypatch, capsys, data):
    from posenet_train import cli

    _fuzz_cli(cli.main, cli.build_parser(), command, cli_world, tmp_path_factory, monkeypatch, capsys, data)
