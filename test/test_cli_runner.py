"""The one parser factory and runner both command lines are built on (posenet_ros.cli_support), and
``info`` on an int8 ONNX model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from posenet_ros import cli as ros_cli
from posenet_ros import cli_support
from posenet_train import cli as train_cli


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    return set(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)


def test_both_programs_are_built_by_the_shared_factory(monkeypatch, capsys) -> None:
    built: list[str] = []
    factory = cli_support.build_command_parser

    def spy(prog, description, version):
        built.append(prog)
        return factory(prog, description, version)

    for cli in (ros_cli, train_cli):
        monkeypatch.setattr(cli, "build_command_parser", spy)
    assert _commands(ros_cli.build_parser()) == {"replay", "live", "export-onnx", "info", "bench"}
    assert _commands(train_cli.build_parser()) == {
        "convert", "synth", "fit", "export", "eval", "calibrate", "to-bag", "from-bag", "label-sfm", "map"
    }  # fmt: skip
    assert built == ["posenet-ros", "posenet-train"]
    for cli, prog in ((ros_cli, "posenet-ros"), (train_cli, "posenet-train")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["--help"])
        out = capsys.readouterr().out
        assert exit_info.value.code == 0 and _commands(cli.build_parser()) <= set(out.split())
        with pytest.raises(SystemExit):
            cli.main(["--version"])
        assert capsys.readouterr().out.strip() == f"{prog.replace('-', '_')} 0.1.0"


@pytest.mark.parametrize(
    ("cli", "command", "where"),
    [(ros_cli, "info", "posenet-ros"), (train_cli, "convert", "posenet-train convert")],
    ids=["posenet-ros", "posenet-train"],
)
def test_the_runner_turns_errors_into_one_line(cli, command, where, monkeypatch, capsys, tmp_path: Path) -> None:
    """A user's mistake exit 2, a bug one 'internal error' line with exit 1 (the traceback with
    POSENET_TRACEBACK=1), Ctrl-C exit 130: the same in both programs."""
    argv = {"info": ["info", "m.pt"], "convert": ["convert", "src", "--format", "colmap", "--out", "o"]}[command]

    def raising(exc: BaseException):
        def command_fn(args: argparse.Namespace) -> int:
            raise exc

        return command_fn

    target = (ros_cli, "_cmd_info") if cli is ros_cli else (train_cli, "run")
    cases = [
        (cli_support.UsageError("bad thing; do this"), 2, f"{where}: error: bad thing; do this"),
        (OSError("disk full\nsecond line"), 2, f"{where}: error: disk full"),
        (KeyError("oops"), 1, f"{cli.build_parser().prog} {command}: internal error: KeyError: oops"),
        (KeyboardInterrupt(), 130, f"{where}: interrupted"),
    ]
    monkeypatch.delenv("POSENET_TRACEBACK", raising=False)
    for exc, code, line in cases:
        monkeypatch.setattr(*target, raising(exc))
        if cli is ros_cli:  # set_defaults(func=...) was bound when the parser was built
            monkeypatch.setattr(ros_cli, "build_parser", _with_func(ros_cli.build_parser, raising(exc)))
        assert cli.main(argv) == code
        err = capsys.readouterr().err
        assert err.strip().splitlines() == [err.strip()] and err.strip().startswith(line), err
    monkeypatch.setattr(*target, raising(KeyError("oops")))
    if cli is ros_cli:
        monkeypatch.setattr(ros_cli, "build_parser", _with_func(ros_cli.build_parser, raising(KeyError("oops"))))
    monkeypatch.setenv("POSENET_TRACEBACK", "1")
    with pytest.raises(KeyError):
        cli.main(argv)


def _with_func(build, func):
    def build_parser() -> argparse.ArgumentParser:
        parser = build()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                action.choices["info"].set_defaults(func=func)
        return parser

    return build_parser


@pytest.fixture(scope="module")
def int8_model(tiny_file, tmp_path_factory) -> Path:
    from posenet_ros.onnx_export import quantize_onnx

    rng = np.random.default_rng(0)
    frames = [(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), "rgb8") for _ in range(2)]
    return quantize_onnx(tiny_file[0], tmp_path_factory.mktemp("int8") / "tiny_int8.onnx", frames)


def test_info_on_an_int8_onnx_model_json_and_summary(int8_model: Path, capsys) -> None:
    assert ros_cli.main(["info", "--json", str(int8_model)]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # the whole output is one JSON document, nothing after it
    assert data["quantization"]["format"] == "QDQ" and data["quantization"]["frames"] == 2
    assert data["scene"]["name"] == "test_scene" and "Traceback" not in captured.err
    assert ros_cli.main(["info", str(int8_model)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"{int8_model}: ONNX PoseNet for scene 'test_scene'")
    assert (
        "weights        int8 (QDQ: weights int8 per channel, activations uint8, minmax calibration on 2 frames)" in text
    )
    assert not text.lstrip().startswith("{")
