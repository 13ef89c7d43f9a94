"""What a file handed to us as a model or as weights is, from its bytes, without unpickling it: so a
training checkpoint given where an exported model belongs (or the reverse) is named for what it is,
instead of surfacing as torch's loader errors."""

from __future__ import annotations

import zipfile
from pathlib import Path


def _zip_names(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def torch_file_kind(path: Path) -> str:
    """What a ``.pt``-like file is: ``torchscript`` (an exported model), ``checkpoint`` (a training
    checkpoint saved by ``posenet-train fit``), ``state_dict`` (another ``torch.save`` archive),
    ``legacy`` (an old non-zip pickle), ``onnx`` or ``unknown``."""
    names = _zip_names(path)
    if names is not None:
        tails = {n.split("/", 1)[-1] for n in names}
        if "constants.pkl" in tails or any(n.split("/", 1)[-1].startswith("code/") for n in names):
            return "torchscript"
        if "data.pkl" in tails:
            return "checkpoint" if _looks_like_training_checkpoint(path) else "state_dict"
        return "unknown"
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError:
        return "unknown"
    if head[:1] == b"\x80":  # a pickle protocol opcode: torch.save's pre-zip format
        return "legacy"
    if path.suffix.lower() == ".onnx" and head[:1] == b"\x08":  # ModelProto starts with ir_version
        return "onnx"
    return "unknown"


def _looks_like_training_checkpoint(path: Path) -> bool:
    """A fit checkpoint pickles its config dict; the key names show in the pickle's text."""
    try:
        with zipfile.ZipFile(path) as z:
            name = next(n for n in z.namelist() if n.endswith("data.pkl"))
            text = z.read(name)
    except (StopIteration, zipfile.BadZipFile, OSError, KeyError):
        return False
    return b"optimizer" in text and b"normalization" in text
