"""What both command lines (``posenet-ros``, ``posenet-train``) share: an argument parser whose
mistakes are one line with the way out, help that shows every default, and checks of the paths a
command is given, run before any long work starts.

Every check here raises ``UsageError`` with a one-line message that says what is wrong and what to do;
the commands print it as ``PROG: error: MESSAGE`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from posenet_ros.errors import first_line
from posenet_ros.model_files import torch_file_kind

USAGE_EXIT = 2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm")
BAG_SHAPE = (
    "a rosbag2 recording is a folder with metadata.yaml and .db3 or .mcap files (or one such file, or a ROS 1 .bag)"
)


class UsageError(ValueError):
    """A command was given something it cannot use; the message is one line with the way out."""


# -- argument parsing -----------------------------------------------------------------------------


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the text already names its default or the
    option has none worth showing (None, False, a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if isinstance(action, argparse.BooleanOptionalAction):
            text = text.replace(" (default: %(default)s)", "")  # Python 3.11 adds its own True/False
            flag = action.option_strings[0] if default else action.option_strings[-1]
            return text if "default" in text else f"{text} (default: {flag})"
        quiet = default is None or default is False or default is argparse.SUPPRESS or default == ""
        if not action.option_strings or quiet or "default" in text:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._VersionAction, argparse._HelpAction)):
            return text
        shown = " ".join(str(v) for v in default) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose mistakes are one line and exit 2: no usage dump, no abbreviated
    options (``--mod`` must not silently mean ``--model``), and an unknown option is reported (with
    the close match) before the missing required one it was probably meant to be."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._argv: list[str] = []

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def _known_options(self) -> list[str]:
        return [s for a in self._actions for s in a.option_strings]

    def unknown_option_message(self, tokens: list[str]) -> str | None:
        known = self._known_options()
        for token in tokens:
            if not token.startswith("-") or token == "-" or _is_number(token):
                continue
            if token == "--":
                break
            name = token.split("=", 1)[0]
            if name in known:
                continue
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
            hint = f"; did you mean {close[0]}?" if close else ""
            return f"unknown option {name}{hint}"
        return None

    def error(self, message: str) -> NoReturn:
        if message.startswith(("the following arguments are required", "unrecognized arguments")):
            message = self.unknown_option_message(self._argv) or message
        self.exit(USAGE_EXIT, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parse_args`` with unknown options reported as one line (with the sub-command's close match)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = _chosen_subparser(parser, args)
        message = (sub.unknown_option_message(extra) if isinstance(sub, OneLineParser) else None) or (
            f"unexpected argument(s): {' '.join(extra)}"
        )
        (sub or parser).error(message)
    return args


def _chosen_subparser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(getattr(args, action.dest, None) or "")
    return None


# -- the command line itself: one parser factory and one runner for both programs ----------------


def build_command_parser(
    prog: str, description: str | None, version: str
) -> tuple[OneLineParser, argparse._SubParsersAction]:
    """The top-level parser of ``posenet-ros`` or ``posenet-train``: the module docstring as the
    description (its command table kept as written), ``--version``, and a required COMMAND whose
    sub-parsers are OneLineParsers too. Returns the parser and the object to add commands to."""
    parser = OneLineParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{prog.replace('-', '_')} {version}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    return parser, sub


def run_command_line(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    run: Callable[[argparse.Namespace], int],
    user_errors: tuple[type[BaseException], ...],
    command_in_errors: bool = True,
) -> int:
    """Parse ``argv`` and run the command: a user's mistake (``UsageError`` or one of
    ``user_errors``) is ``PROG CMD: error: LINE`` with exit 2 (``PROG: error:`` without
    ``command_in_errors``), Ctrl-C exit 130, and anything else, a bug, one ``internal error`` line
    with exit 1 (``POSENET_TRACEBACK=1`` re-raises it for the traceback)."""
    args = parse_args(parser, argv)
    where = f"{parser.prog} {args.command}" if command_in_errors else parser.prog
    try:
        return int(run(args))
    except (UsageError, *user_errors) as exc:
        print(f"{where}: error: {first_line(exc)}", file=sys.stderr)
        return USAGE_EXIT
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a user mistake: still one line, the traceback on request
        if os.environ.get("POSENET_TRACEBACK"):
            raise
        print(
            f"{parser.prog} {args.command}: internal error: {type(exc).__name__}: {first_line(exc)} "
            "(rerun with POSENET_TRACEBACK=1 for the traceback and report it)",
            file=sys.stderr,
        )
        return 1


# -- checks of what a command is given -----------------------------------------------------------


# The longest span an option may give in seconds (11.6 days): every stamp plus such a span stays
# inside rosbag2's int64 nanoseconds.
MAX_SECONDS = 1e6


def check_seconds(value: float, option: str, zero: bool = False) -> None:
    """A span in seconds: > 0 (>= 0 with ``zero``) and at most ``MAX_SECONDS``; NaN and inf refused."""
    if not ((value >= 0 if zero else value > 0) and value <= MAX_SECONDS):
        least = ">= 0" if zero else "> 0"
        raise UsageError(f"{option} must be {least} and at most {MAX_SECONDS:g} seconds, got {value}")


def check_model_file(path: Path, what: str = "model") -> None:
    """An exported model (.pt TorchScript or .onnx) that exists; a training checkpoint or another
    file is named for what it is, with the command that makes a model out of it."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{what} file not found: {path}")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give the exported model file (.pt or .onnx)")
    kind = torch_file_kind(path)
    if kind == "checkpoint":
        raise UsageError(
            f"{path} is a training checkpoint, not an exported model; "
            f"make one with: posenet-train export {path} MODEL.pt"
        )
    if kind in ("state_dict", "legacy"):
        raise UsageError(f"{path} holds plain weights, not an exported model; export it with posenet-train export")
    if kind == "unknown" and path.suffix.lower() != ".onnx":
        raise UsageError(f"{path} is not a model file (an exported TorchScript .pt or ONNX .onnx)")


def check_bag_path(path: Path) -> None:
    """Something ``open_bag`` can read: a folder of images or an empty folder is named for what it
    is, with what a bag looks like."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"bag not found: {path}")
    if path.is_file():
        if path.suffix not in (".db3", ".mcap", ".bag"):
            raise UsageError(f"{path} is not a bag file; {BAG_SHAPE}")
        return
    if (path / "metadata.yaml").is_file() or path.suffix == ".bag":
        return
    entries = list(path.iterdir())
    storage = [p for p in entries if p.suffix in (".db3", ".mcap")]
    if len(storage) == 1:
        return  # a bare storage file in a folder: open_bag writes its metadata
    if not entries:
        raise UsageError(f"{path} is an empty folder, not a bag; {BAG_SHAPE}")
    if storage:
        raise UsageError(
            f"{path} has {len(storage)} storage files but no metadata.yaml; recreate it with "
            f"'ros2 bag reindex {path}' or give one of the files"
        )
    if (path / "poses.csv").is_file():
        raise UsageError(
            f"{path} is a data set (poses.csv), not a bag; record it as one with: posenet-train to-bag {path} --out BAG"
        )
    images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
    held = f"{len(images)} images" if images else f"{len(entries)} entries"
    raise UsageError(f"{path} is not a bag: no metadata.yaml and no .db3/.mcap file (it holds {held}); {BAG_SHAPE}")


def check_output_folder(path: Path, option: str) -> None:
    """A folder a command may create or write into: not an existing file, under a parent that is
    not a file either."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file; give a folder to write into")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(f"{option} {path}: {parent} is a file, not a folder")


def check_new_bag_folder(path: Path, option: str) -> None:
    """rosbag2 writers refuse an existing folder; say so before any frame is processed."""
    path = Path(path)
    if path.exists():
        raise UsageError(f"{option} {path} already exists; rosbag2 writes a new folder, remove it or pick another name")
    check_output_folder(path, option)
