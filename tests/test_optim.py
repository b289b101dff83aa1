"""The optimizer (unimodal/train/optim.py): which parameters Muon takes, and its step against an
independent float64 Newton-Schulz reference; the AdamW half against torch's AdamW."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from unimodal.config import ModelConfig
from unimodal.model import UnifiedModel
from unimodal.train.config import OptimConfig
from unimodal.train.optim import build_optimizer


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = UnifiedModel(ModelConfig.from_preset("micro"))
    opt = build_optimizer(model, OptimConfig(kind="muon", lr=1e-3, muon_lr=0.05))
    names = {id(p): n for n, p in model.named_parameters()}
    adam, muon = opt.param_groups
    assert (adam["use_muon"], muon["use_muon"]) == (False, True)
    assert (adam["lr"], muon["lr"]) == (1e-3, 0.05)
    muon_names = {names[id(p)] for p in muon["params"]}
    adam_names = {names[id(p)] for p in adam["params"]}
    assert muon_names == {n for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2}
    assert adam_names == set(names.values()) - muon_names
    # hidden matrices only: attention, MLP and AdaLN modulation; every embedding and output stays with AdamW
    assert {n.split(".", 2)[2] for n in muon_names} == {
        "attn.qkv.weight",
        "attn.proj.weight",
        "mlp.fc1.weight",
        "mlp.fc2.weight",
        "adaLN_modulation.1.weight",
    }
    assert {"x_embedder.weight", "tok_embedder.weight", "final_layer.linear.weight"} <= adam_names
    assert all(p.use_muon == (names[id(p)] in muon_names) for p in model.parameters())  # what ZeRO reads


def test_adamw_is_torchs():
    model = UnifiedModel(ModelConfig.from_preset("micro"))
    opt = build_optimizer(model, OptimConfig(lr=2e-3, betas=[0.8, 0.9], weight_decay=0.1))
    assert type(opt) is torch.optim.AdamW and len(opt.param_groups) == 1
    g = opt.param_groups[0]
    assert (g["lr"], g["betas"], g["weight_decay"], g["eps"]) == (2e-3, (0.8, 0.9), 0.1, 1e-8)
    assert len(g["params"]) == len(list(model.parameters()))


def test_muon_cannot_offload():
    with pytest.raises(ValueError, match="offload_optimizer"):
        build_optimizer(nn.Linear(2, 2), OptimConfig(kind="muon"), offload=True)


def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Keller Jordan's quintic iteration in float64, on the wide orientation of g."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.double()
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if tall else x


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        # two blocks: matrices of one shape in several layers
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(8, 24), nn.LayerNorm(24), nn.Linear(24, 8)) for _ in range(2)
        )
        self.head = nn.Linear(8, 5)


def test_muon_step_matches_the_reference():
    torch.manual_seed(0)
    model = Toy()
    cfg = OptimConfig(kind="muon", lr=1e-2, betas=[0.9, 0.95], weight_decay=0.1, muon_lr=0.05, muon_momentum=0.9)
    opt = build_optimizer(model, cfg)
    named = dict(model.named_parameters())
    muon = {n for n, p in named.items() if p.use_muon}
    assert muon == {f"blocks.{i}.{j}.weight" for i in (0, 1) for j in (0, 2)}

    # the reference: SGD momentum (Nesterov), orthogonalised, scaled by sqrt(max(1, rows/cols));
    # torch's AdamW for the rest
    ref = {n: p.detach().clone().double() for n, p in named.items() if n in muon}
    buf = {n: torch.zeros_like(w) for n, w in ref.items()}
    rest = {n: nn.Parameter(p.detach().clone()) for n, p in named.items() if n not in muon}
    ref_adam = torch.optim.AdamW(list(rest.values()), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)

    for _ in range(3):
        grads = {n: torch.randn_like(p) for n, p in named.items()}
        for n, p in named.items():
            p.grad = grads[n].clone()
        opt.step()
        for n in muon:
            g = grads[n].double()
            buf[n].lerp_(g, 1 - 0.9)
            update = newton_schulz(g.lerp(buf[n], 0.9))
            rows, cols = g.shape
            ref[n].mul_(1 - 0.05 * 0.1).add_(update, alpha=-0.05 * math.sqrt(max(1.0, rows / cols)))
        for n, p in rest.items():
            p.grad = grads[n].clone()
        ref_adam.step()

    for n in muon:
        torch.testing.assert_close(named[n].detach().double(), ref[n], rtol=0, atol=2e-5)
    for n, p in rest.items():
        torch.testing.assert_close(named[n].detach(), p.detach(), rtol=0, atol=1e-7)
