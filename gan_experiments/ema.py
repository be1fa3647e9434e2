"""The EMA generator: an exponential moving average of the generator's weights, evaluated and
sampled beside it (Yazıcı et al. 2019, "The Unusual Effectiveness of Averaging in GAN
Training"; StyleGAN's G_ema)."""

import copy

import torch


class EMA(torch.nn.Module):
    """θ_ema ← decay · θ_ema + (1 − decay) · θ after every step, over the generator's parameters
    and buffers (BatchNorm's running statistics too); the first update copies θ. This is
    torch's `AveragedModel(..., get_ema_multi_avg_fn(decay), use_buffers=True)`, whose
    checkpoints it reads and writes (`module.*` and `n_averaged`), with the update count kept
    as a Python int: AveragedModel keeps it in a CPU tensor that it compares and copies to the
    device at every update, so each training step waited for the GPU.

    `module` is the averaged copy of the generator (same input and output shapes)."""

    def __init__(self, generator: torch.nn.Module, decay: float):
        super().__init__()
        self.module = copy.deepcopy(generator).requires_grad_(False)
        self.decay = decay
        self.n_averaged = 0

    @torch.no_grad()
    def update_parameters(self, generator: torch.nn.Module) -> None:
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [*generator.parameters(), *generator.buffers()]
        if self.n_averaged == 0:
            torch._foreach_copy_(averaged, current)
        else:
            floats = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
            if floats:
                torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1 - self.decay)
            for a, c in zip(averaged, current, strict=True):
                if not a.is_floating_point():  # BatchNorm's step counter, as AveragedModel does it
                    a.copy_(a * self.decay + c * (1 - self.decay))
        self.n_averaged += 1

    def state_dict(self, *args, **kwargs) -> dict:
        state = super().state_dict(*args, **kwargs)
        state["n_averaged"] = torch.tensor(self.n_averaged)
        return state

    def load_state_dict(self, state: dict, strict: bool = True, assign: bool = False):
        state = dict(state)
        self.n_averaged = int(state.pop("n_averaged"))
        return super().load_state_dict(state, strict, assign)
