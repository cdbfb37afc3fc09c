"""SGD with momentum and the poly learning-rate schedule, without ``torch.optim``.

Every method of ``torch.optim.Optimizer`` (its constructor's ``add_param_group``, ``zero_grad``, ``step``) is wrapped
by ``torch._disable_dynamo``, whose first call imports ``torch._dynamo``: about 144 MB of resident memory (triton's
library and some 870 modules) that a long-lived app process then keeps after its first update, although no update
compiles anything on CPU. The step here is ``torch.optim.SGD``'s single-tensor step (the one it takes for CPU
tensors), operation for operation, and ``PolySchedule`` is ``LambdaLR`` with the poly factor; both keep torch's
state-dict layout, so resumable snapshots written with ``torch.optim`` load. ``Adam`` is torch's Adam step (no weight
decay), for HRHF's inversion of the old model. ``tests/test_optim.py`` checks that parameters, state dicts and
learning rates agree bit for bit with ``torch.optim``'s.
"""

from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["SGD", "PolySchedule", "Adam"]


def _zero_grad(params: Iterable[torch.Tensor], set_to_none: bool) -> None:
    """``Optimizer.zero_grad``: drop the gradients (the default), or zero them in place."""
    for p in params:
        if p.grad is None:
            continue
        if set_to_none:
            p.grad = None
        else:
            p.grad.detach_().zero_()


class SGD:
    """``torch.optim.SGD(groups, lr, momentum, weight_decay, nesterov)`` (dampening 0): ``param_groups``,
    ``state``, ``step``, ``zero_grad``, ``state_dict`` / ``load_state_dict`` as torch names them, so the gradient
    scaler (``torch.amp.GradScaler``) and the resume snapshots take it as they take torch's."""

    def __init__(self, groups: Iterable[dict], *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs a momentum above 0")
        self.defaults = {"lr": lr, "momentum": momentum, "dampening": 0.0, "weight_decay": weight_decay,
                         "nesterov": nesterov, "maximize": False}
        self.param_groups: list[dict] = []
        self.state: dict[torch.Tensor, dict] = {}
        for group in groups:
            params = list(group["params"])
            if any(not p.is_leaf for p in params):
                raise ValueError("SGD can only optimise leaf tensors")
            self.param_groups.append({**self.defaults, **group, "params": params})
        seen = [id(p) for g in self.param_groups for p in g["params"]]
        if len(seen) != len(set(seen)):
            raise ValueError("some parameters appear in more than one parameter group")

    def zero_grad(self, set_to_none: bool = True) -> None:
        _zero_grad((p for group in self.param_groups for p in group["params"]), set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        """One step on every parameter that has a gradient (the others, and their momentum, are left alone)."""
        for group in self.param_groups:
            momentum, decay, lr = group["momentum"], group["weight_decay"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if decay != 0:
                    grad = grad.add(p, alpha=decay)
                if momentum != 0:
                    state = self.state.setdefault(p, {})
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = torch.clone(grad).detach()
                    else:
                        buf.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
                    grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
                p.add_(grad, alpha=-lr)

    def state_dict(self) -> dict:
        """torch's layout: parameters numbered in group order, ``state`` by number, groups without tensors."""
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]}
                  for g in self.param_groups]
        state = {index[id(p)]: dict(s) for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("the optimiser state was saved for other parameter groups")
        params = [p for g in self.param_groups for p in g["params"]]
        for mine, saved in zip(self.param_groups, groups):
            mine.update({k: v for k, v in saved.items() if k != "params"})
        self.state = {}
        for i, saved in state_dict["state"].items():
            p = params[int(i)]
            self.state[p] = {k: v.to(device=p.device, dtype=p.dtype) if torch.is_tensor(v) else v
                             for k, v in saved.items()}


class PolySchedule:
    """``LambdaLR(optimizer, factor)`` with ``factor(it)`` = 1 for ``start`` iterations, then ``(1 - progress) **
    power`` down to 0 at ``total``: each group's rate is its initial one times the factor, set at construction (it 0)
    and after every ``step``."""

    def __init__(self, optimizer: SGD, *, total: int, power: float, start: int = 0) -> None:
        self.optimizer, self.total, self.power, self.start = optimizer, total, power, start
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = 0
        self._apply()

    def factor(self, it: int) -> float:
        if it < self.start:
            return 1.0
        return max(0.0, 1.0 - (it - self.start) / max(self.total - self.start, 1)) ** self.power

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self.factor(self.last_epoch)

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs), "_last_lr": self.get_last_lr()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.last_epoch, self.base_lrs = int(state_dict["last_epoch"]), list(state_dict["base_lrs"])
        self._apply()


class Adam:
    """``torch.optim.Adam(params, lr, betas, eps)`` without weight decay or AMSGrad: ``step`` and ``zero_grad``
    (HRHF's inversion optimises a batch of images and keeps no state beyond it)."""

    def __init__(self, params: Iterable[torch.Tensor], *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params, self.lr, self.betas, self.eps = list(params), lr, betas, eps
        self.state: dict[torch.Tensor, dict] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        _zero_grad(self.params, set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for p in self.params:
            if p.grad is None:
                continue
            state = self.state.get(p)
            if state is None:
                state = self.state[p] = {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            state["step"] += 1
            step, grad = float(state["step"]), p.grad
            state["exp_avg"].lerp_(grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step_size = self.lr / (1 - beta1 ** step)
            denom = (state["exp_avg_sq"].sqrt() / (1 - beta2 ** step) ** 0.5).add_(self.eps)
            p.addcdiv_(state["exp_avg"], denom, value=-step_size)
