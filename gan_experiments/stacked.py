"""One network of several runs as one: its parameters, buffers (BatchNorm's running statistics)
and optimizer state carry a leading member dimension, and one forward computes every member's
output (`torch.func.functional_call` under `vmap`: a Linear becomes a batched matmul, a
convolution a grouped one, as HFTA (Wang et al., MLSys 2021) fuses them by hand).

Each member's numbers are its own: the optimizers this supports (`ELEMENTWISE`) update every
weight from its own gradient and moments, so a stacked Adam step is each member's Adam step.
`of` stacks members' modules and optimizers; `write_back` copies one member's slice back into
them, so a member's checkpoint, samples and metrics are those of a solo run."""

import copy
from collections.abc import Callable
from functools import partial

import torch
from torch.func import functional_call, stack_module_state, vmap

from gan_experiments import fused_layers

# Optimizers whose update of each weight reads only that weight's gradient and state: stacking
# members leaves their arithmetic alone. (LAMB-like per-tensor norms would mix members.)
ELEMENTWISE = ("torch.optim.Adam", "torch.optim.AdamW", "torch.optim.SGD", "torch.optim.RMSprop")


class StackedNet:
    """`template`'s architecture with every member's weights stacked on dim 0.

    `params` (leaf tensors, each (N, *shape)), `buffers` ((N, *shape)), `optimizer` over the
    stacked parameters and its `schedule`. Calling it maps inputs (N, B, ...) to outputs
    (N, B', ...), member i's through member i's weights."""

    def __init__(self, template: torch.nn.Module, params: dict, buffers: dict,
                 make_optimizer: Callable, make_schedule: Callable, optimizer_state: list[dict],
                 group_lrs: list[float], schedule_state: dict):
        self.template, self.params, self.buffers = template, params, buffers
        self.make_optimizer, self.make_schedule = make_optimizer, make_schedule
        self.optimizer = make_optimizer(list(params.values()))
        for p, state in zip(params.values(), optimizer_state, strict=True):
            if state:
                self.optimizer.state[p] = state
        self.schedule = make_schedule(self.optimizer)
        self.schedule.load_state_dict(schedule_state)
        for group, lr in zip(self.optimizer.param_groups, group_lrs, strict=True):
            group["lr"] = lr  # a fresh scheduler set the initial rate; the members' is current
        # Fused layers where this project's networks have them; vmap computes any other.
        self._forward = (partial(fused_layers.forward, template) if fused_layers.supports(template)
                         else vmap(partial(_forward, template)))

    @classmethod
    def of(cls, modules: list[torch.nn.Module], optimizers: list[torch.optim.Optimizer],
           schedules: list, make_optimizer: Callable, make_schedule: Callable) -> "StackedNet":
        """The members' modules, optimizer states and (shared) learning-rate schedule, stacked.
        Raises ValueError where the members' schedules or steps differ: they cannot share one."""
        template = copy.deepcopy(modules[0]).to("meta")  # the architecture; no weights
        params, buffers = stack_module_state(modules)
        states = []
        for j, p in enumerate(params.values()):
            per_member = [opt.state.get(list(m.parameters())[j], {}) for opt, m in zip(optimizers, modules, strict=True)]
            states.append(_stack_state(per_member, p))
        schedule_state = schedules[0].state_dict()
        if any(s.state_dict() != schedule_state for s in schedules[1:]):
            raise ValueError("members at different points of their learning-rate schedules cannot be stacked")
        lrs = [g["lr"] for g in optimizers[0].param_groups]
        return cls(template, params, buffers, make_optimizer, make_schedule, states, lrs, schedule_state)

    @property
    def members(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def __call__(self, x: torch.Tensor, *, frozen: bool = False) -> torch.Tensor:
        """Every member's forward on its own input: (N, B, ...) -> (N, B', ...). `frozen`: no
        gradient reaches the weights (a G step through D), only the input."""
        params = {k: v.detach() for k, v in self.params.items()} if frozen else self.params
        return self._forward(params, self.buffers, x)

    def step(self, loss: torch.Tensor, measure: bool) -> torch.Tensor | None:
        """Backward of the members' (N,) losses, summed (each member's gradient is its own
        loss's), and one optimizer step. Returns each member's gradient norm where `measure`."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        norms = self.grad_norms() if measure else None
        self.optimizer.step()
        return norms

    def grad_norms(self) -> torch.Tensor:
        """(N,): each member's total gradient 2-norm, as `torch.nn.utils.get_total_norm` of a
        solo run."""
        norms = [p.grad.reshape(p.shape[0], -1).norm(dim=1) for p in self.params.values() if p.grad is not None]
        return torch.stack(norms, dim=1).norm(dim=1)

    def select(self, keep: list[int]) -> "StackedNet":
        """The members `keep` (indices), without the others: a diverged member leaves the group."""
        def index(v: torch.Tensor) -> torch.Tensor:  # stacked as `of` stacks: the same memory layout
            return torch.stack([v[i] for i in keep])

        params = {k: index(v.detach()).requires_grad_(True) for k, v in self.params.items()}
        states = []
        for old, new in zip(self.params.values(), params.values(), strict=True):
            state = self.optimizer.state.get(old, {})
            states.append({k: torch.empty_like(new).copy_(index(v)) if _stacked(v, old) else v
                           for k, v in state.items()})
        return StackedNet(self.template, params, {k: index(v) for k, v in self.buffers.items()},
                          self.make_optimizer, self.make_schedule, states,
                          [g["lr"] for g in self.optimizer.param_groups], self.schedule.state_dict())

    @torch.no_grad()
    def write_back(self, i: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule) -> None:
        """Member `i`'s weights, buffers, optimizer state and schedule into its own objects."""
        for name, p in module.named_parameters():
            p.copy_(self.params[name][i])
        for name, b in module.named_buffers():
            b.copy_(self.buffers[name][i])
        for p, stacked in zip(module.parameters(), self.params.values(), strict=True):
            state = self.optimizer.state.get(stacked, {})
            optimizer.state[p] = {k: (v[i] if _stacked(v, stacked) else v).clone() for k, v in state.items()}
        for group, fused in zip(optimizer.param_groups, self.optimizer.param_groups, strict=True):
            group["lr"] = fused["lr"]
        schedule.load_state_dict(self.schedule.state_dict())


def _forward(template: torch.nn.Module, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
    return functional_call(template, (params, buffers), (x,))


def _stacked(value, param: torch.Tensor) -> bool:
    """Whether an optimizer state entry holds one value per weight (a moment), not one shared
    by all (Adam's step count)."""
    return isinstance(value, torch.Tensor) and value.shape == param.shape


def _stack_state(per_member: list[dict], stacked_param: torch.Tensor) -> dict:
    if not any(per_member):
        return {}
    first = per_member[0]
    out = {}
    for key, value in first.items():
        if isinstance(value, torch.Tensor) and value.shape == stacked_param.shape[1:] and value.dim() > 0:
            # In the parameter's memory layout, as the optimizer makes its state
            # (preserve_format): elementwise kernels round alike only on alike strides.
            out[key] = torch.empty_like(stacked_param).copy_(torch.stack([s[key] for s in per_member]))
        else:
            if any(not _equal(s[key], value) for s in per_member[1:]):
                raise ValueError(f"members differ in their optimizer's {key!r}: they cannot be stacked")
            out[key] = value.clone() if isinstance(value, torch.Tensor) else value
    return out


def _equal(a, b) -> bool:
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
