"""The optimizer: AdamW, or Muon for the transformer's hidden matrices with AdamW for the rest.

Muon (Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/) takes SGD momentum and
replaces each matrix's update by its nearest semi-orthogonal matrix (a Newton-Schulz iteration), so
every direction of a weight moves at the same rate. It is meant for hidden matrices only: here the
2-D weights inside `blocks` (attention, MLP and AdaLN modulation). Embeddings, the output layers,
norms and biases stay with AdamW. The optimizer is DeepSpeed's own `MuonWithAuxAdam`, which ZeRO
stages 1-2 shard (they orthogonalise each matrix whole before partitioning its update); DeepSpeed
reads the `use_muon` flag set here on every parameter. Where DeepSpeed trains Muon wrong (clipping
under ZeRO 1-2, ZeRO-3, offload) the config is refused on load (`config.check_muon`).
"""

from __future__ import annotations

import torch

from .config import OptimConfig


def uses_muon(name: str, param: torch.Tensor) -> bool:
    """Whether Muon trains this parameter: a matrix inside the transformer's blocks."""
    return param.ndim == 2 and name.startswith("blocks.")


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, offload: bool = False) -> torch.optim.Optimizer:
    """The optimizer `cfg.kind` names over `model`'s trainable parameters.

    `offload`: the DeepSpeed config keeps the optimizer in CPU memory (`offload_optimizer`), which
    needs DeepSpeed's CPU Adam; Muon has no offloaded form.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    adam = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.kind == "adamw":
        if offload:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam([p for _, p in params], adamw_mode=True, **adam)
        return torch.optim.AdamW([p for _, p in params], **adam)
    if offload:
        raise ValueError("optim.kind: muon cannot run with the DeepSpeed config's offload_optimizer; use adamw")
    from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam

    for name, p in params:
        p.use_muon = uses_muon(name, p)
    muon = [p for _, p in params if p.use_muon]
    rest = [p for _, p in params if not p.use_muon]
    groups = [  # AdamW's first: the trainer logs the first group's rate as `lr`
        dict(params=rest, use_muon=False, **adam),
        dict(params=muon, use_muon=True, lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=cfg.weight_decay),
    ]
    return MuonWithAuxAdam([g for g in groups if g["params"]], adam_optimizer=torch.optim.AdamW)
