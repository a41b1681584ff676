"""The optimizers `train.optimizer` names: torch's AdamW, or Muon for a model's hidden weight
matrices with AdamW for the rest of it (`MuonAdamW`)."""

from __future__ import annotations

import math
from collections import ChainMap

import torch


def orthogonalise(matrix: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration: `matrix` with its singular values pushed towards 1,
    computed in `dtype` on the shorter side's Gram matrix."""
    a, b, c = coefficients
    x = matrix.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)          # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Muon):
    """`torch.optim.Muon` (Nesterov momentum, quintic Newton-Schulz, decoupled weight decay; updates
    scaled to AdamW's RMS, 0.2 sqrt(max(rows, cols))) with the Newton-Schulz products in `ns_dtype`.
    torch's own always uses bf16, which CPUs without bf16 matrix instructions (AVX2) emulate, slower
    than fp32; the trainer passes the run's precision. With `ns_dtype=torch.bfloat16`
    the steps are torch's, bit for bit. Its state is torch's (`momentum_buffer` per matrix)."""

    def __init__(self, params, ns_dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(params, adjust_lr_fn="match_rms_adamw", **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalise(update, group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-lr * (0.2 * math.sqrt(max(p.shape[:2]))))
        return loss


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer made of two: `Muon` (momentum orthogonalised by Newton-Schulz) for the hidden
    weight matrices, `torch.optim.AdamW` for every other parameter (embeddings, output layer, norms,
    biases).

    Muon's updates are scaled to AdamW's RMS, so both take the same learning rate and weight decay,
    and the trainer's schedule drives them through `param_groups` as it drives a single optimizer.
    Checkpoints hold both states.
    """

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], betas: tuple[float, float],
                 ns_dtype: torch.dtype = torch.bfloat16):
        self.muon = Muon(muon_groups, ns_dtype=ns_dtype, lr=0.0)
        self.adamw = torch.optim.AdamW(adamw_groups, lr=0.0, betas=betas)
        self.defaults = {}

    # Both read through to the two optimizers, whose group dicts `load_state_dict` replaces.
    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    @property
    def state(self) -> ChainMap:
        return ChainMap(self.muon.state, self.adamw.state)

    def step(self, closure=None):
        loss = self.muon.step(closure)      # the closure, if any, runs once
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError(f"not a Muon + AdamW optimizer state (keys {sorted(state_dict)}): the checkpoint was "
                             "written with another train.optimizer")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])

    def add_param_group(self, param_group: dict) -> None:
        raise NotImplementedError("add parameters to MuonAdamW.muon or MuonAdamW.adamw")

    def __repr__(self) -> str:
        return f"MuonAdamW(muon={self.muon!r}, adamw={self.adamw!r})"


def build_optimizer(kind: str, groups: list[dict], hidden: list[torch.nn.Parameter],
                    betas: tuple[float, float], mixed_precision: str) -> torch.optim.Optimizer:
    """`kind` "adamw": AdamW over `groups`. "muon": Muon over the `hidden` matrices (taken out of
    `groups`, keeping their group's weight decay), AdamW over the rest. Muon's Newton-Schulz
    products run in bf16 only where the run's matrix products do (`mixed_precision` "bf16")."""
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=0.0, betas=betas)
    if kind != "muon":
        raise ValueError(f"train.optimizer must be adamw or muon, got {kind!r}")
    if not hidden:
        raise ValueError("train.optimizer=muon: this model names no hidden weight matrices for Muon; "
                         "use train.optimizer=adamw")
    if any(p.ndim != 2 for p in hidden):
        raise ValueError("train.optimizer=muon: Muon takes 2-D weight matrices only")
    ids = {id(p) for p in hidden}
    muon_groups, adamw_groups = [], []
    for group in groups:
        inside = [p for p in group["params"] if id(p) in ids]
        outside = [p for p in group["params"] if id(p) not in ids]
        if inside:
            muon_groups.append({**group, "params": inside})
        if outside:
            adamw_groups.append({**group, "params": outside})
    if sum(len(g["params"]) for g in muon_groups) != len(ids):
        raise ValueError("train.optimizer=muon: a hidden matrix is not among the parameters the model trains")
    return MuonAdamW(muon_groups, adamw_groups, betas,
                     torch.bfloat16 if mixed_precision == "bf16" else torch.float32)
