"""Export a PoseNet to the TorchScript file the node loads, with its contract embedded.

The file holds the scripted, frozen eval graph (batch norm folded into the convolutions, dropout and
the auxiliary heads gone). Device-specific rewrites (MKLDNN, CUDA graphs) are not saved: they do not
serialize portably, so the engine applies them at load time for the device it runs on.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from posenet_ros.atomic import atomic_path
from posenet_ros.contract import EXTRA_FILE_NAME, Contract, ContractError


def script_for_inference(model: nn.Module) -> torch.jit.ScriptModule:
    """Scripted (not traced: no shape is baked in) and frozen eval-mode graph of ``model``, keeping
    the methods it lists in ``EXPORTED_METHODS``. The caller's module keeps its training flag."""
    was_training = model.training
    model.eval()
    preserved = list(getattr(model, "EXPORTED_METHODS", ()))
    try:
        return torch.jit.freeze(torch.jit.script(model), preserved_attrs=preserved)
    finally:
        model.train(was_training)


def export_torchscript(model: nn.Module, contract: Contract, path: str | Path) -> Path:
    """Write ``model`` as a frozen TorchScript file carrying ``contract``, atomically: the file at
    ``path`` is either the previous one or the complete new one, never a partial write."""
    if not isinstance(contract, Contract):
        raise ContractError("export needs a Contract instance")
    # Round-trip the JSON so a contract that would be refused at load is refused now.
    contract_json = contract.to_json()
    Contract.from_json(contract_json)
    frozen = script_for_inference(model)
    with atomic_path(path) as tmp:
        torch.jit.save(frozen, str(tmp), _extra_files={EXTRA_FILE_NAME: contract_json})
    return Path(path)
