"""Export a PoseNet to the TorchScript file the node loads, with its contract embedded.

The file holds the scripted, frozen eval graph (batch norm folded into the convolutions, dropout and
the auxiliary heads gone). Device-specific rewrites (MKLDNN, CUDA graphs) are not saved: they do not
serialize portably, so the engine applies them at load time for the device it runs on.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from posenet_ros.atomic import atomic_path
from posenet_ros.contract import EXTRA_FILE_NAME, Contract, ContractError


def script_for_inference(model: nn.Module, mc_dropout: bool = False) -> torch.jit.ScriptModule:
    """Scripted (not traced: no shape is baked in) and frozen eval-mode graph of ``model``, keeping
    the methods it lists in ``EXPORTED_METHODS`` (and its Monte Carlo dropout method when asked).
    The caller's module keeps its training flag."""
    was_training = model.training
    model.eval()
    preserved = list(getattr(model, "EXPORTED_METHODS", ()))
    if mc_dropout:
        method = getattr(model, "MC_DROPOUT_METHOD", None)
        if method is None:
            raise ContractError(f"{type(model).__name__} has no Monte Carlo dropout method to export")
        preserved.append(method)
    try:
        return torch.jit.freeze(torch.jit.script(model), preserved_attrs=preserved)
    finally:
        model.train(was_training)


def export_torchscript(model: nn.Module, contract: Contract, path: str | Path, mc_dropout: bool = False) -> Path:
    """Write ``model`` as a frozen TorchScript file carrying ``contract``, atomically: the file at
    ``path`` is either the previous one or the complete new one, never a partial write. With
    ``mc_dropout`` the file keeps the dropout-active sampling method and the contract lists the
    ``mc_dropout`` uncertainty mode."""
    if not isinstance(contract, Contract):
        raise ContractError("export needs a Contract instance")
    modes = tuple(m for m in contract.uncertainty_modes if m != "mc_dropout") + (("mc_dropout",) if mc_dropout else ())
    contract = replace(contract, uncertainty_modes=modes)
    # Round-trip the JSON so a contract that would be refused at load is refused now.
    contract_json = contract.to_json()
    Contract.from_json(contract_json)
    frozen = script_for_inference(model, mc_dropout)
    with atomic_path(path) as tmp:
        torch.jit.save(frozen, str(tmp), _extra_files={EXTRA_FILE_NAME: contract_json})
    return Path(path)


def rewrite_contract(src: str | Path, dst: str | Path, contract: Contract) -> Path:
    """Copy a TorchScript model with a new contract (e.g. with calibration added), atomically."""
    contract_json = contract.to_json()
    Contract.from_json(contract_json)
    module = torch.jit.load(str(src), map_location="cpu")
    with atomic_path(dst) as tmp:
        torch.jit.save(module, str(tmp), _extra_files={EXTRA_FILE_NAME: contract_json})
    return Path(dst)
