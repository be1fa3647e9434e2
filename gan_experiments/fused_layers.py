"""Fused layers (HFTA, Wang et al., MLSys 2021, section 3): the forward of N same-shaped
networks as one call per layer, on weights stacked along a leading member dimension.

- A Linear is one batched matmul (`baddbmm`) over members.
- A Conv2d or ConvTranspose2d is one grouped convolution, with the members as groups, on
  activations laid out (batch, members x channels, H, W). A transposed convolution of a 1x1
  input (DCGAN G's first layer) is a linear map, so it too is a batched matmul.
- BatchNorm normalises members x channels as channels, so each member keeps its own statistics
  and running statistics.
- GroupNorm(g, C) is GroupNorm(g N, N C).
- Activations apply as they are.

Each member's numbers are its network's, up to float rounding. `torch.func.vmap` computes the
same, but its batching rules turn each layer's backward into several more operator calls
(views, expands, transposes), and each call is a kernel launch on a GPU (BENCHMARKS.md,
"Fused seeds"). `supports` says which networks this module knows; `StackedNet` falls back to
vmap for the others."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from gan_experiments.models.dcgan import DCGANDiscriminator, DCGANGenerator
from gan_experiments.models.mlp import Maxout, MLPDiscriminator, MLPGenerator

ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.ELU, nn.Identity)
LINEAR_LAYERS = (nn.Linear, Maxout, nn.BatchNorm1d, *ELEMENTWISE)
CONV_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.GroupNorm, *ELEMENTWISE)


def supports(network: nn.Module) -> bool:
    """Whether `forward` computes `network` (one of this project's G or D, with layers it knows)."""
    layers = {MLPGenerator: LINEAR_LAYERS, MLPDiscriminator: LINEAR_LAYERS,
              DCGANGenerator: CONV_LAYERS, DCGANDiscriminator: CONV_LAYERS}.get(type(network))
    return layers is not None and all(type(layer) in layers for layer in network.net)


def forward(network: nn.Module, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
    """Every member's `network.forward` on its own input: (N, B, ...) -> (N, B', ...). `network`
    gives the architecture (and training mode); `params` and `buffers` its stacked state, by
    state-dict name. BatchNorm's running statistics in `buffers` are updated in place."""
    n, batch = x.shape[:2]
    state = {**params, **buffers}
    if isinstance(network, MLPGenerator):
        return _linear_layers(network.net, state, x).view(n, batch, *network.out_shape)
    if isinstance(network, MLPDiscriminator):  # PacGAN: `pack` consecutive samples as one input
        return _linear_layers(network.net, state, x.reshape(n, batch // network.pack, -1)).view(n, -1)
    if isinstance(network, DCGANGenerator):
        y = _conv_layers(network.net, state, x.transpose(0, 1).reshape(batch, n * network.latent_dim, 1, 1), n)
        return y.view(batch, n, -1, *y.shape[2:]).transpose(0, 1)
    if isinstance(network, DCGANDiscriminator):  # PacGAN: packs stacked along the channels
        _, _, c, h, w = x.shape
        packed = x.reshape(n, batch // network.pack, c * network.pack, h, w).transpose(0, 1)
        y = _conv_layers(network.net, state, packed.reshape(batch // network.pack, n * c * network.pack, h, w), n)
        return y.view(y.shape[0], n).t()
    raise TypeError(f"no fused forward for {type(network).__name__}")


def _linear_layers(net: nn.Sequential, state: dict, x: torch.Tensor) -> torch.Tensor:
    """`net`'s layers on (N, B, features)."""
    for i, layer in enumerate(net):
        name = f"net.{i}."
        if isinstance(layer, nn.Linear):
            x = _linear(x, state[name + "weight"], state.get(name + "bias"))
        elif isinstance(layer, Maxout):
            x = _linear(x, state[name + "linear.weight"], state[name + "linear.bias"])
            x = x.view(*x.shape[:-1], layer.out_features, layer.pieces).amax(dim=-1)
        elif isinstance(layer, nn.BatchNorm1d):
            n, batch, c = x.shape
            y = _batch_norm(layer, state, name, x.transpose(0, 1).reshape(batch, n * c))
            x = y.view(batch, n, c).transpose(0, 1)
        else:
            x = layer(x)
    return x


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (N, B, in) @ weight (N, out, in)^T + bias (N, out)."""
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def _conv_layers(net: nn.Sequential, state: dict, x: torch.Tensor, n: int) -> torch.Tensor:
    """`net`'s layers on (B, N x C, H, W): member m's channels are the m-th block of C."""
    x = x.contiguous(memory_format=torch.channels_last)
    for i, layer in enumerate(net):
        name = f"net.{i}."
        bias = state.get(name + "bias")
        bias = bias.flatten() if bias is not None else None
        if isinstance(layer, nn.ConvTranspose2d) and _is_linear_map(layer, x):
            x = _latent_to_map(x, state[name + "weight"], bias, n)
        elif isinstance(layer, nn.Conv2d):
            x = F.conv2d(x, state[name + "weight"].flatten(0, 1), bias, layer.stride, layer.padding,
                         layer.dilation, groups=n * layer.groups)
        elif isinstance(layer, nn.ConvTranspose2d):
            x = F.conv_transpose2d(x, state[name + "weight"].flatten(0, 1), bias, layer.stride, layer.padding,
                                   layer.output_padding, n * layer.groups, layer.dilation)
        elif isinstance(layer, nn.BatchNorm2d):
            x = _batch_norm(layer, state, name, x)
        elif isinstance(layer, nn.GroupNorm):
            x = F.group_norm(x, n * layer.num_groups, state[name + "weight"].flatten(), bias, layer.eps)
        else:
            x = layer(x)
    return x


def _is_linear_map(layer: nn.ConvTranspose2d, x: torch.Tensor) -> bool:
    """Whether `layer` on `x` is a linear map of the input's channels: a 1x1 input without
    padding (a DCGAN generator's first layer, which projects z to a k x k map)."""
    return (x.shape[-2:] == (1, 1) and layer.padding == (0, 0) and layer.output_padding == (0, 0)
            and layer.dilation == (1, 1) and layer.groups == 1)


def _latent_to_map(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, n: int) -> torch.Tensor:
    """ConvTranspose2d of x (B, N x C_in, 1, 1) with weight (N, C_in, C_out, k, k) as one batched
    matmul: y[b, o, i, j] = sum_c x[b, c] w[c, o, i, j]. Returns (B, N x C_out, k, k) in
    channels_last. The grouped transposed convolution computes the same but, with one group per
    member, 6x slower on a CPU (oneDNN) for the default G (BENCHMARKS.md, "Fused seeds")."""
    batch = x.shape[0]
    _, c_in, c_out, kh, kw = weight.shape
    # (k, k, C_out) innermost: a channels_last weight's own memory order, so no copy of it.
    w = weight.permute(0, 1, 3, 4, 2).reshape(n, c_in, kh * kw * c_out)
    y = torch.bmm(x.reshape(batch, n, c_in).transpose(0, 1), w)
    # (N, B, k, k, C_out) -> memory (B, k, k, N, C_out): channels_last for the layers after.
    y = y.view(n, batch, kh, kw, c_out).permute(1, 2, 3, 0, 4).reshape(batch, kh, kw, n * c_out)
    y = y.permute(0, 3, 1, 2)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def _batch_norm(layer: nn.modules.batchnorm._BatchNorm, state: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    """`layer` on x (B, N x C, ...), as torch's BatchNorm computes it for each member; the
    running statistics (N, C) are updated in place through their flat views."""
    momentum = layer.momentum
    if layer.training and layer.track_running_stats:
        counted = state[name + "num_batches_tracked"]
        counted.add_(1)
        if momentum is None:  # a cumulative average: the members have seen as many batches
            momentum = 1.0 / float(counted[0])
    running_mean, running_var = state.get(name + "running_mean"), state.get(name + "running_var")
    weight = state.get(name + "weight")
    training = layer.training or running_mean is None  # torch's rule: no running statistics, batch ones
    return F.batch_norm(
        x, running_mean.view(-1) if running_mean is not None else None,
        running_var.view(-1) if running_var is not None else None,
        weight.flatten() if weight is not None else None,
        state[name + "bias"].flatten() if weight is not None else None,
        training, momentum or 0.0, layer.eps)
