"""A newcomer's mistakes with ``posenet-ros`` and ``posenet-train``: each is one line on stderr that
says what is wrong and what to do, exit status 2, no traceback, and is found before any long work
(decoding images, loading a model, reading frames) starts. And what used to pass silently now warns."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from posenet_ros import cli as ros_cli
from posenet_ros.cli_support import HelpFormatter
from posenet_train import cli as train_cli
from posenet_train.bags import ToBagConfig, dataset_to_bag
from posenet_train.synth import SynthConfig, render_dataset

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "models" / "posenet_demo.pt"


def run(main, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit code, stdout, stderr of one command; any exception but SystemExit fails the test (it
    would be a traceback for the user)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two short test sequences of the demo room (no train images)."""
    root = tmp_path_factory.mktemp("scene")
    cfg = SynthConfig(train_sequences=0, test_sequences=2, frames_per_sequence=4, width=64, height=48)
    render_dataset(cfg, root, progress=False)
    return root


@pytest.fixture(scope="module")
def bag(scene: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bag") / "camera_bag"
    dataset_to_bag(ToBagConfig(scene, out, storage="mcap"))
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file shaped like fit's checkpoint.pt (the keys are what tells it apart)."""
    path = tmp_path_factory.mktemp("run") / "checkpoint.pt"
    torch.save({"config": {}, "model": {}, "optimizer": {}, "normalization": {}, "step": 1}, path)
    return path


def no_long_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a command gets as far as training, rendering, evaluating or replaying."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the long work started before the mistake was found")

    import posenet_ros.replay
    import posenet_train.evaluate
    import posenet_train.synth
    import posenet_train.train

    for module, name in (
        (posenet_train.train, "fit"),
        (posenet_train.train, "PoseDataset"),
        (posenet_train.synth, "render_dataset"),
        (posenet_train.evaluate, "evaluate"),
        (posenet_ros.replay, "replay"),
    ):
        monkeypatch.setattr(module, name, refuse)


# -- argparse mistakes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["replay", "BAG", "--modle", "m.pt"], ("unknown option --modle; did you mean --model?", "--help")),
        (["replay", "BAG", "--mod", "m.pt"], ("unknown option --mod; did you mean --model?",)),  # no abbreviations
        (["replay"], ("required: bag, --model", "see posenet-ros replay --help")),
        (["bench", "--iterations", "x"], ("invalid int value: 'x'",)),
        (["frobnicate"], ("invalid choice: 'frobnicate'",)),
    ],
)
def test_posenet_ros_usage_mistakes_are_one_line(argv, fragments, capsys) -> None:
    code, out, err = run(ros_cli.main, argv, capsys)
    one_line_error(code, err, "posenet-ros", *fragments)
    assert "usage:" not in err and out == ""


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["fit", "DATA", "--otu", "r"], ("unknown option --otu; did you mean --out?",)),
        (["eval", "m.pt"], ("required: dataset",)),
        (["synth", "--out", "x", "--frames", "many"], ("invalid int value: 'many'",)),
    ],
)
def test_posenet_train_usage_mistakes_are_one_line(argv, fragments, capsys) -> None:
    code, _, err = run(train_cli.main, argv, capsys)
    one_line_error(code, err, "posenet-train", *fragments)


def _every_option(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                for option in _every_option(sub):
                    yield (name, *option[1:])
        elif action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield (parser.prog, action, HelpFormatter(parser.prog)._get_help_string(action))


@pytest.mark.parametrize("cli", [ros_cli, train_cli], ids=["posenet-ros", "posenet-train"])
def test_every_option_has_help_with_its_default(cli) -> None:
    for command, action, text in _every_option(cli.build_parser()):
        where = f"{command} {action.option_strings[0]}"
        assert action.help and text, f"{where} has no help text"
        default = action.default
        if default not in (None, "", argparse.SUPPRESS) and not isinstance(action, argparse._StoreTrueAction):
            assert "default" in text, f"{where}: the help does not show its default {default!r}"


def test_top_level_help_lists_every_command_and_versions_exist(capsys) -> None:
    for cli, prog in ((ros_cli, "posenet-ros"), (train_cli, "posenet-train")):
        code, out, _ = run(cli.main, ["--help"], capsys)
        commands = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
        assert code == 0 and set(commands) <= {w.strip() for w in out.split()}, out
        code, out, _ = run(cli.main, ["--version"], capsys)
        assert code == 0 and out.startswith(prog.replace("-", "_")), out
    assert {"replay", "export-onnx", "info", "bench"} <= set(
        next(a for a in ros_cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    )


# -- posenet-ros: paths and option combinations --------------------------------------------------


def test_a_folder_of_images_or_an_empty_folder_is_not_a_bag(tmp_path: Path, tiny_file, capsys, monkeypatch) -> None:
    no_long_work(monkeypatch)
    images = tmp_path / "images"
    images.mkdir()
    for k in range(3):
        (images / f"{k}.png").write_bytes(b"png")
    code, _, err = run(ros_cli.main, ["replay", str(images), "--model", str(tiny_file[0])], capsys)
    one_line_error(code, err, "is not a bag", "no metadata.yaml", "3 images", "a rosbag2 recording is a folder")
    (tmp_path / "empty").mkdir()
    code, _, err = run(ros_cli.main, ["replay", str(tmp_path / "empty"), "--model", str(tiny_file[0])], capsys)
    one_line_error(code, err, "is an empty folder, not a bag", "metadata.yaml")


def test_a_data_set_given_as_a_bag_names_to_bag(scene: Path, tiny_file, capsys, monkeypatch) -> None:
    no_long_work(monkeypatch)
    code, _, err = run(ros_cli.main, ["replay", str(scene), "--model", str(tiny_file[0])], capsys)
    one_line_error(code, err, "is a data set (poses.csv), not a bag", "posenet-train to-bag")


@pytest.mark.parametrize("command", ["replay", "info", "export-onnx"])
def test_a_training_checkpoint_is_named_with_the_way_out(
    command, bag: Path, checkpoint: Path, tmp_path, capsys
) -> None:
    argv = {
        "replay": ["replay", str(bag), "--model", str(checkpoint)],
        "info": ["info", str(checkpoint)],
        "export-onnx": ["export-onnx", str(checkpoint), str(tmp_path / "m.onnx")],
    }[command]
    code, _, err = run(ros_cli.main, argv, capsys)
    one_line_error(code, err, "is a training checkpoint", f"posenet-train export {checkpoint}")
    assert "corrupted" not in err


def test_a_missing_model_is_the_only_line(bag: Path, capsys) -> None:
    """No "CUDA not available" line before it: the file is checked before a device is picked."""
    code, _, err = run(ros_cli.main, ["replay", str(bag), "--model", "missing.pt"], capsys)
    one_line_error(code, err, "model file not found: missing.pt")


def test_rate_without_realtime_is_refused(bag: Path, capsys, monkeypatch) -> None:
    no_long_work(monkeypatch)
    code, _, err = run(ros_cli.main, ["replay", str(bag), "--model", str(DEMO_MODEL), "--rate", "2"], capsys)
    one_line_error(code, err, "--rate only applies with --realtime")


def test_export_onnx_refuses_a_non_onnx_output_name(tiny_file, tmp_path: Path, capsys) -> None:
    out = tmp_path / "model.pt"
    code, _, err = run(ros_cli.main, ["export-onnx", str(tiny_file[0]), str(out)], capsys)
    one_line_error(code, err, "must end in .onnx")
    assert not out.exists()


def test_report_into_a_file_is_refused_before_replaying(bag: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    no_long_work(monkeypatch)
    target = tmp_path / "report.html"
    target.write_text("")
    argv = ["replay", str(bag), "--model", str(DEMO_MODEL), "--report", str(target)]
    code, _, err = run(ros_cli.main, argv, capsys)
    one_line_error(code, err, "--report", "is a file")


# -- posenet-train: fit, synth, eval, export, to-bag ----------------------------------------------


@pytest.mark.parametrize(
    ("pretrained", "fragments"),
    [
        ("MODEL", ("is an exported PoseNet model, not backbone weights", "'imagenet'")),
        ("README", ("is not a PyTorch weights file", "'imagenet'")),
        ("imagnet", ("no such file; did you mean the keyword imagenet?",)),
        ("CHECKPOINT", ("is a posenet-train checkpoint", "--resume")),
    ],
)
def test_fit_pretrained_mistakes_before_any_image_is_decoded(
    pretrained, fragments, scene: Path, checkpoint: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    no_long_work(monkeypatch)
    value = {"MODEL": str(DEMO_MODEL), "README": str(REPO / "README.md"), "CHECKPOINT": str(checkpoint)}
    argv = ["fit", str(scene), "--out", str(tmp_path / "run"), "--pretrained", value.get(pretrained, pretrained)]
    code, _, err = run(train_cli.main, argv, capsys)
    one_line_error(code, err, "posenet-train fit: error: --pretrained", *fragments)


def test_fit_itself_checks_pretrained_before_loading_images(scene: Path, tmp_path: Path, monkeypatch) -> None:
    """The library path too (torchrun scripts call fit directly)."""
    from posenet_train import train

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("images decoded before --pretrained was checked")

    monkeypatch.setattr(train, "PoseDataset", refuse)
    cfg = train.FitConfig(data=str(scene), out=str(tmp_path / "r"), pretrained=str(REPO / "README.md"))
    with pytest.raises(ValueError, match="is not a PyTorch weights file"):
        train.fit(cfg)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--frames", "0"], "--frames must be >= 2"),
        (["--train-sequences", "-1"], "--train-sequences must be >= 0"),
        (
            ["--train-sequences", "0", "--test-sequences", "0", "--val-sequences", "0"],
            "at least one train, test or val",
        ),
        (["--val-sequences", "-1"], "--val-sequences must be >= 0"),
        (["--hfov", "200"], "--hfov must be in (0, 180)"),
    ],
)
def test_synth_refuses_what_would_render_nothing(args, fragment, tmp_path: Path, capsys) -> None:
    out = tmp_path / "s"
    code, _, err = run(train_cli.main, ["synth", "--out", str(out), *args], capsys)
    one_line_error(code, err, fragment)
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["fit", "NOWHERE", "--out", "RUN"], ("not found", "poses.csv")),
        (["fit", "SCENE", "--out", "RUN", "--export", "m.onnx"], ("--export", "must end in .pt")),
        (["fit", "SCENE", "--out", "RUN", "--resume"], ("--resume: no checkpoint.pt",)),
        (["fit", "EMPTY", "--out", "RUN"], ("has no poses.csv", "posenet-train convert")),
        (["export", "MODEL", "out.pt"], ("is already an exported model",)),
        (["export", "CHECKPOINT", "out.onnx"], ("must end in .pt",)),
        (["eval", "CHECKPOINT_TXT", "SCENE"], ("neither an exported model nor a posenet-train checkpoint",)),
        (["to-bag", "SCENE", "--out", "SCENE"], ("already exists",)),
        (["to-bag", "SCENE", "--out", "NEW", "--rate", "0"], ("--rate must be between",)),
        (["from-bag", "SCENE", "--out", "RUN", "--gt-frames", "map", "cam"], ("is a data set (poses.csv), not a bag",)),
        (["calibrate", "CHECKPOINT", "SCENE"], ("is a training checkpoint", "posenet-train export")),
        # calibrate fits on val by default; the scene has test frames only (issue 18).
        (
            ["calibrate", "MODEL", "SCENE"],
            ("no 'val' frames in", "(0 train, 8 test)", "convert again", "--split explicitly"),
        ),
        (["calibrate", "MODEL", "SCENE", "--split", "train"], ("no 'train' frames in", "0 val, 8 test")),
        (
            ["convert", "SCENE", "--format", "7scenes", "--out", "RUN", "--val-fraction", "1"],
            ("--val-fraction must be",),
        ),
    ],
)
def test_posenet_train_path_mistakes(argv, fragments, scene: Path, checkpoint: Path, tmp_path, capsys, monkeypatch):
    no_long_work(monkeypatch)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.pt").write_text("not a model")
    names = {
        "SCENE": str(scene),
        "RUN": str(tmp_path / "run"),
        "NEW": str(tmp_path / "new_bag"),
        "EMPTY": str(tmp_path / "empty"),
        "NOWHERE": str(tmp_path / "nowhere"),
        "MODEL": str(DEMO_MODEL),
        "CHECKPOINT": str(checkpoint),
        "CHECKPOINT_TXT": str(tmp_path / "notes.pt"),
    }
    code, _, err = run(train_cli.main, [names.get(a, a) for a in argv], capsys)
    one_line_error(code, err, *fragments)


def test_eval_without_train_images_prints_posenet_and_skips_the_baseline(
    scene: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """No --no-baseline on a test-only data set: PoseNet's figures, one note, and the output under
    out/ of the working folder (never next to the model)."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run(train_cli.main, ["eval", str(DEMO_MODEL), str(scene), "--batch-size", "8"], capsys)
    assert code == 0, err
    assert "PoseNet" in out and "nearest neighbour " not in out
    notes = [line for line in out.splitlines() if "baseline skipped" in line]
    assert len(notes) == 1 and "no train images" in notes[0] and "--no-baseline" in notes[0]
    summary = json.loads((tmp_path / "out" / "eval" / "posenet_demo_test" / "summary.json").read_text())
    assert summary["posenet"]["frames"] == 8 and "nearest_neighbour" not in summary
    assert "within_0.25m_2deg" in summary["posenet"]
    assert not (DEMO_MODEL.parent / "eval_test").exists()


def test_eval_of_a_model_from_another_scene_warns(scene: Path, tiny_file, tmp_path: Path, capsys) -> None:
    """The tiny fixture model's scene is 4 x 3 x 2 m around (10, -5, 1); the room is elsewhere."""
    argv = ["eval", str(tiny_file[0]), str(scene), "--no-baseline", "--out", str(tmp_path / "e")]
    code, out, err = run(train_cli.main, argv, capsys)
    assert code == 0, err
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert any("outside the model's scene 'test_scene'" in w and "another scene" in w for w in warnings), out
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["warnings"]


def test_convert_says_what_it_read_and_dropped(tmp_path: Path, capsys) -> None:
    src = tmp_path / "seven"
    cfg = SynthConfig(
        train_sequences=1, test_sequences=1, frames_per_sequence=3, width=32, height=24, seven_scenes=True
    )
    render_dataset(cfg, src, progress=False)
    (src / "seq-01" / "frame-000001.pose.txt").unlink()
    code, out, err = run(
        train_cli.main, ["convert", str(src), "--format", "7scenes", "--out", str(tmp_path / "c")], capsys
    )
    assert code == 0, err
    assert "read 5 frames" in out and "(2 train, 3 test)" in out
    assert "dropped 1 images without a pose.txt (first: seq-01/frame-000001.color.png)" in out


# -- replay: warnings on implausible figures ------------------------------------------------------


def test_swapped_gt_frames_warn(bag: Path, capsys) -> None:
    argv = ["replay", str(bag), "--model", str(DEMO_MODEL), "--device", "cpu", "--no-progress"]
    code, out, err = run(ros_cli.main, [*argv, "--gt-frames", "camera_optical", "map"], capsys)
    assert code == 0, err
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warnings and all("--gt-frames takes the map frame first" in w for w in warnings), out
    code, out, err = run(ros_cli.main, [*argv, "--gt-frames", "map", "camera_optical"], capsys)
    assert code == 0 and "warning:" not in out, out


def test_plausibility_warnings_follow_the_scene_box() -> None:
    from posenet_ros.report import SceneBox, plausibility_warnings

    box = SceneBox("room", np.array([5.0, 4.0, 1.5]), np.array([5.0, 4.0, 1.0]))
    inside = np.array([[4.0, 3.0, 1.5], [6.0, 5.0, 1.2]])
    assert plausibility_warnings(box, inside, np.array([0.2, 0.4]), "x") == []
    far = inside + 20.0
    assert "outside the model's scene 'room'" in plausibility_warnings(box, far, np.array([0.2, 0.4]), "x")[0]
    big_errors = plausibility_warnings(box, inside, np.array([3.0, 4.0]), "check it")
    assert len(big_errors) == 1 and "70% of the model's scene size" in big_errors[0] and "check it" in big_errors[0]


# -- what the CLI fuzzing (test_fuzz.py) found: each was an internal error, a late or a misleading one --


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        # a progress bar, then "need at least one array to concatenate"
        (["eval", "MODEL", "SCENE", "--batch-size", "0"], ("--batch-size must be >= 1",)),
        # internal error: AttributeError: 'sensor_msgs__msg__Image' object has no attribute 'transforms'
        (["to-bag", "SCENE", "--out", "NEW", "--image-topic", "/tf"], ("is taken by the recording's own /tf",)),
        (["to-bag", "SCENE", "--out", "NEW", "--image-topic", "my camera"], ("is not a ROS topic name",)),
        # internal error: OverflowError (stamps beyond int64 nanoseconds)
        (["to-bag", "SCENE", "--out", "NEW", "--rate", "1e-300"], ("--rate must be between 0.001 and 1e6",)),
        (["to-bag", "SCENE", "--out", "NEW", "--sequence-gap", "1e300"], ("--sequence-gap must be >= 0 and at most",)),
        (["from-bag", "BAG", "--out", "RUN", "--gt-topic", "/gt", "--gt-max-gap", "1E300"], ("--gt-max-gap must be",)),
        (["from-bag", "BAG", "--out", "RUN", "--gt-topic", "/gt", "--block-seconds", "1e300"], ("--block-seconds",)),
        # found only after every frame of the bag was read
        (["from-bag", "BAG", "--out", "RUN", "--gt-topic", "/gt", "--test-fraction", "1"], ("--test-fraction must",)),
        (["from-bag", "BAG", "--out", "RUN", "--gt-topic", "/gt", "--every", "0"], ("--every must be >= 1",)),
        # NaN: every frame dropped as "too little motion"
        (["from-bag", "BAG", "--out", "RUN", "--gt-topic", "/gt", "--min-translation", "nan"], ("finite number >= 0",)),
        # found only after structure from motion ran
        (["label-sfm", "SCENE", "--out", "RUN", "--scale", "-1"], ("--scale must be a finite number",)),
        (["label-sfm", "SCENE", "--out", "RUN", "--align-to", "NOWHERE"], ("--align-to", "not found")),
        (["label-sfm", "SCENE", "--out", "RUN", "--test-fraction", "0"], ("--test-fraction must",)),
    ],
)
def test_mistakes_the_fuzzer_found(argv, fragments, scene: Path, bag: Path, tmp_path, capsys, monkeypatch) -> None:
    no_long_work(monkeypatch)
    import posenet_train.sfm

    monkeypatch.setattr(posenet_train.sfm, "run_colmap", lambda *a, **k: pytest.fail("SfM ran before the check"))
    names = {
        "SCENE": str(scene),
        "BAG": str(bag),
        "MODEL": str(DEMO_MODEL),
        "RUN": str(tmp_path / "run"),
        "NEW": str(tmp_path / "new_bag"),
        "NOWHERE": str(tmp_path / "nowhere.csv"),
    }
    code, _, err = run(train_cli.main, [names.get(a, a) for a in argv], capsys)
    one_line_error(code, err, *fragments)


def test_replay_gt_max_gap_beyond_int64_nanoseconds_is_refused(bag: Path, capsys, monkeypatch) -> None:
    no_long_work(monkeypatch)
    argv = ["replay", str(bag), "--model", str(DEMO_MODEL), "--gt-topic", "/gt", "--gt-max-gap", "inf"]
    code, _, err = run(ros_cli.main, argv, capsys)
    one_line_error(code, err, "posenet-ros: error: --gt-max-gap must be > 0 and at most")


def test_map_of_a_data_set_without_intrinsics_is_one_line_naming_what_is_missing(tmp_path: Path, capsys) -> None:
    from posenet_train.cli import main as train_main

    data = tmp_path / "data"
    data.mkdir()
    (data / "poses.csv").write_text("image,split,x,y,z,qw,qx,qy,qz\na.png,train,0,0,0,1,0,0,0\n")
    assert train_main(["map", str(data), "--out", str(tmp_path / "m.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no camera intrinsics" in err[0] and "--fx" not in err[0], err
