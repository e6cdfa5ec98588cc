"""Generator networks: measured diffraction amplitude (B, N, N) -> complex object patch O (B, N, N).

At gridsize g the C = g^2 patterns of a group enter together as channels, (B, C, N, N), and C
patches come out, (B, C, N, N) complex: the network sees its neighbours' patterns (PtychoPINN's
overlap constraint then merges the C patches, see ``overlap``). At C = 1 the layers, their
initialization and the output are exactly the single-pattern network.

Plain ``nn.Module``s that know nothing of Lightning, the physics or the loss. One registry,
``GENERATORS``, holds the architectures named in ``config.ARCHITECTURES``:

- ``cnn``: a convolutional encoder/decoder (no skip connections: the input lives in reciprocal
  space and the output in real space, so pixels of the two are not aligned; the bottleneck
  carries the global mapping).
- ``fno``: a Fourier neural operator (Li et al. 2021, arXiv:2010.08895): a lifting 1x1 conv,
  ``fno_blocks`` blocks x <- x + act(K x + W x) with K a spectral convolution that keeps the
  lowest ``fno_modes`` x ``fno_modes`` modes (positive and negative frequencies on the first
  axis, rfft2's half spectrum on the second) and W a 3x3 convolution, then ``fno_cnn_blocks``
  refiner convolutions and a projection to the heads.
- ``hybrid``: spectral blocks as an encoder with downsampling, then the convolutional decoder.

The fno's and hybrid's lift and first spectral block run as one computation (``LiftedSequential``,
``lift``): both are linear in the lifted channels, so the block's convolution and spectral layer
read the C input patterns (and a constant channel for the lift's bias) instead of ``fno_width``
lifted channels. The layers and parameters are unchanged.

Every generator ends in the same head (``generator_output_mode``):
``amp_phase``: O = sigmoid(a) * exp(i * pi * tanh(p)), so |O| in (0, 1) and |angle O| <= pi;
``real_imag``: O = re + i * im.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
from torch import nn

from ptycho_torch.config import ModelConfig
from ptycho_torch.fused import ConvGELUSequential
from ptycho_torch.lift import composable, lifted_block, plain_conv
from ptycho_torch.spectral import spectral_conv
from ptycho_torch.upsampling import UpsampleConv2d

MIN_CNN_SIZE = 8  # the cnn bottleneck stops at 8x8 pixels (N=64 -> three levels)
MIN_HYBRID_SIZE = 8  # hybrid stages stop downsampling at 8x8 (modes there are clamped to 4)
MAX_CHANNEL_DOUBLINGS = 3  # channels double per level up to 8x the base, then stay


def normalize_amplitude(amplitude: torch.Tensor, N: int, channels: int = 1) -> torch.Tensor:
    """(B, N, N) or (B, C, N, N) amplitude -> (B, C, N, N) float32 log1p(amplitude), C = ``channels``.

    Diffraction amplitudes span orders of magnitude (the central peak against the
    speckle), so log1p compresses that range into something a network can read. It is
    monotone and per-pixel, so the absolute scale, which encodes the object's
    transmission, survives; a per-pattern or per-batch normalization would erase it or
    make one pattern's output depend on its batch neighbours.
    """
    if amplitude.ndim == 3:
        amplitude = amplitude.unsqueeze(1)  # (B, 1, N, N)
    if amplitude.ndim != 4 or amplitude.shape[1] != channels or tuple(amplitude.shape[-2:]) != (N, N):
        raise ValueError(f"amplitude must be (B, {N}, {N}) or (B, {channels}, {N}, {N}), got {tuple(amplitude.shape)}")
    return torch.log1p(amplitude.float().clamp_min(0.0))  # (B, C, N, N) float32


class ComplexHead(nn.Module):
    """(B, F, n, n) features -> (B, P, n, n) complex64 patches, by ``generator_output_mode``."""

    def __init__(self, in_channels: int, output_mode: str, patches: int = 1):
        super().__init__()
        if output_mode not in ("amp_phase", "real_imag"):
            raise ValueError(f"generator_output_mode={output_mode!r}: must be amp_phase or real_imag")
        self.output_mode = output_mode
        self.patches = patches
        # channels [0, P) / [P, 2P): amp / phase (or re / im) of each patch
        self.project = PointwiseConv2d(in_channels, 2 * patches)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # back to the plain layout: the physics, the overlap merge and the losses index patches by pixel
        first, second = self.project(features).float().contiguous().split(self.patches, dim=1)  # 2 x (B, P, n, n)
        if self.output_mode == "amp_phase":
            return polar(torch.sigmoid(first), math.pi * torch.tanh(second))  # (B, P, n, n) complex64
        return torch.complex(first, second)  # (B, P, n, n) complex64


def polar(amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """amplitude * exp(i phase), as ``torch.polar`` to float32 rounding, with vectorized cos and sin:
    torch 2.13's CPU polar kernel is scalar (586 us against 149 us for 169 patches of 32 x 32 here,
    half the head's time in prediction)."""
    return torch.complex(amplitude * torch.cos(phase), amplitude * torch.sin(phase))


class InputConv2d(nn.Conv2d):
    """The 3x3 convolution that reads the C = gridsize^2 input patterns, answering in channels_last.

    Every layer runs in channels_last (``Generator``), but at C = 1 the input and this layer's
    weight are contiguous in both layouts, and oneDNN then answers in the plain one, which
    would make every later layer convert back and forth.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).contiguous(memory_format=torch.channels_last)


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution computed as one matrix product over the pixels, answering in channels_last.

    A channels_last (B, C, H, W) tensor is a (B H W, C) matrix in memory, so the layer is
    ``addmm(bias, pixels, weight^T)`` and its backward two more products. oneDNN's 1x1
    convolution took 0.58 ms forward and 1.0-1.3 ms with the backward for the fno's lift from one
    input channel (16 x 32 x 32 pixels, 32 outputs) on this CPU, the product 0.06 / 0.3 ms. The
    parameters are those of ``nn.Conv2d(in, out, 1)``: checkpoints load either way.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:  # an unbatched (C, H, W) input: the convolution's own path
            return super().forward(x)
        batch, _, height, width = x.shape
        pixels = x.permute(0, 2, 3, 1).reshape(-1, self.in_channels)  # (B H W, in): a view in channels_last
        weight = self.weight.view(self.out_channels, self.in_channels).t()  # (in, out)
        out = pixels @ weight if self.bias is None else torch.addmm(self.bias, pixels, weight)
        return out.view(batch, height, width, self.out_channels).permute(0, 3, 1, 2)  # channels_last


class DenseGELU(nn.GELU):
    """GELU that reads a channels_last tensor as the dense (B, H, W, C) array it is in memory.

    torch 2.13's GELU (forward and backward) takes a slower, differently rounded kernel for a
    channels_last tensor than for a contiguous one: 1.7-2x the time on this CPU, in float32 and
    bf16 alike. The permuted view is contiguous, so it gets the vectorized kernel; the values are
    those of GELU on a contiguous tensor, and the result is channels_last again.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return super().forward(x)


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


def conv_block(in_channels: int, out_channels: int,
               first: Callable[[int, int], nn.Conv2d] = conv3x3) -> nn.Sequential:
    """Two 3x3 convolutions with GELU, the first one ``first``; the second keeps the spatial size
    (each pair fused in prediction)."""
    return ConvGELUSequential(
        first(in_channels, out_channels), DenseGELU(),
        conv3x3(out_channels, out_channels), DenseGELU(),
    )


def pyramid_channels(base: int, levels: int) -> list[int]:
    """Channels at levels 0..levels: base, 2 base, 4 base, 8 base, 8 base, ..."""
    return [base * 2 ** min(level, MAX_CHANNEL_DOUBLINGS) for level in range(levels + 1)]


def halvings(size: int, minimum: int, most: int | None = None) -> int:
    """How many times ``size`` can be halved without going below ``minimum`` (at most ``most``)."""
    count = max(0, int(math.log2(size // minimum))) if size >= minimum else 0
    return count if most is None else min(count, most)


class ConvDecoder(nn.Module):
    """(B, channels[-1], n, n) -> (B, channels[0], n * 2**k, n * 2**k), k = len(channels) - 1.

    Each stage upsamples 2x (nearest) and runs a conv block; the upsampling is computed inside the
    block's first convolution (``UpsampleConv2d``)."""

    def __init__(self, channels: list[int]):
        super().__init__()
        self.stages = nn.ModuleList(
            conv_block(channels[k], channels[k - 1], first=UpsampleConv2d) for k in range(len(channels) - 1, 0, -1)
        )
        self.register_load_state_dict_pre_hook(_rename_separate_upsampling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)  # (B, C_k, n, n) -> (B, C_{k-1}, 2n, 2n)
        return x


def _rename_separate_upsampling(module, state_dict, prefix, *_) -> None:
    """Checkpoints written while each stage was (Upsample, conv block) name the block's layers
    ``stages.K.1.L``; they are ``stages.K.L`` now (``stages.K.1`` is a GELU, holding nothing)."""
    stage = re.compile(re.escape(prefix) + r"stages\.(\d+)\.1\.(\d+\..+)$")
    for key in [key for key in state_dict if stage.match(key)]:
        state_dict[stage.sub(lambda match: f"{prefix}stages.{match[1]}.{match[2]}", key)] = state_dict.pop(key)


class SpectralConv2d(nn.Module):
    """Spectral convolution (``spectral``): multiply the lowest ``modes`` x ``modes`` Fourier modes
    by learned complex weights; the rest is zeroed. A pure per-frequency product, so the layer
    commutes with circular shifts.

    The complex weight is stored as a real (out, 2m, m, in, 2) tensor: optimizers, DDP and
    clipping see ordinary float parameters, dim 0 is the output unit that AGC clips by, and each
    mode's (in, out) matrix is a plain view for the batched products.
    """

    def __init__(self, in_channels: int, out_channels: int, modes: int):
        super().__init__()
        self.modes = modes
        std = math.sqrt(1.0 / (in_channels + out_channels))  # Glorot-like, split over re and im
        drawn = std * torch.randn(out_channels, in_channels, 2 * modes, modes, 2)  # the draw order of (out, in, ...)
        self.weight = nn.Parameter(drawn.permute(0, 2, 3, 1, 4).contiguous())  # (out, 2m, m, in, 2)

    def forward(self, x: torch.Tensor, add_to: torch.Tensor | None = None) -> torch.Tensor:
        """(B, in, h, w) -> (B, out, h, w) float32 channels_last; ``add_to`` + that where given (the
        sum may be computed in ``add_to``'s memory: the caller gives it up, see ``spectral_conv``)."""
        return self.with_weight(x, self.weight, add_to)

    def with_weight(self, x: torch.Tensor, weight: torch.Tensor, add_to: torch.Tensor | None = None) -> torch.Tensor:
        """The layer with ``weight`` (out, 2m, m, in', 2) in place of its own (``lift``'s composed one)."""
        # The DFT products stay in float32 even under autocast: bf16 / fp16 spectra lose the small modes.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return spectral_conv(x.float(), weight.float(), self.modes, add_to)


class SpectralBlock(nn.Module):
    """x <- x + GELU(K x + W x): K spectral convolution, W a 3x3 convolution; shape kept."""

    def __init__(self, width: int, modes: int):
        super().__init__()
        self.spectral = SpectralConv2d(width, width, modes)
        self.local = nn.Conv2d(width, width, 3, padding=1)
        self.act = DenseGELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the spectral layer adds itself into the convolution's output (float32; under bf16
        # autocast the convolution's bf16 output is summed out of place, into float32)
        return x + self.act(self.spectral(x, add_to=self.local(x)))  # (B, width, n, n)


class LiftedSequential(ConvGELUSequential):
    """A body that starts with a lift (``PointwiseConv2d``) and a ``SpectralBlock``: the two run as one,
    the lift composed into the block's convolution and spectral layer (``lift``), where that pays."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.composes(x):
            return super().forward(x)
        return self.run(self.lifted(x), start=2)

    def composes(self, x: torch.Tensor) -> bool:
        """Whether ``x`` goes through the composed pair (else through the layers one by one)."""
        # exactly these layers (a subclass may compute something else), read as the composition reads them
        if len(self) < 2 or not (type(self[0]) is PointwiseConv2d and type(self[1]) is SpectralBlock
                                 and type(self[1].spectral) is SpectralConv2d):
            return False
        return plain_conv(self[1].local) and composable(self[0], x)

    def lifted(self, x: torch.Tensor) -> torch.Tensor:
        """The first block applied to the lift of ``x``, composed."""
        block = self[1]
        return lifted_block(self[0], block.local, block.spectral, block.act, x)


class Generator(nn.Module):
    """Shared frame: normalize the amplitude, run ``body``, turn its features into O."""

    def __init__(self, cfg: ModelConfig, body: nn.Module, body_channels: int):
        super().__init__()
        self.N = cfg.N
        self.group = group_size(cfg)
        self.body = body
        self.head = ComplexHead(body_channels, cfg.generator_output_mode, self.group)
        # channels_last throughout: oneDNN's convolutions are faster in it (cnn step 19.5 -> 15 ms
        # on this CPU), and the spectral convolution works in it natively
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                layer.to(memory_format=torch.channels_last)

    def forward(self, amplitude: torch.Tensor) -> torch.Tensor:
        """gridsize 1: (B, N, N) -> (B, N, N) complex64; gridsize 2: (B, C, N, N) -> (B, C, N, N)."""
        x = normalize_amplitude(amplitude, self.N, self.group)  # (B, C, N, N) float32
        patches = self.head(self.body(x.contiguous(memory_format=torch.channels_last)))  # (B, C, N, N) complex64
        return patches[:, 0] if self.group == 1 else patches


def group_size(cfg: ModelConfig) -> int:
    """C = gridsize^2 patterns per group: the generator's input and output channels."""
    return cfg.gridsize ** 2


class CNNGenerator(Generator):
    """Encoder (conv blocks, average-pool halving down to 8x8) and a mirrored decoder."""

    def __init__(self, cfg: ModelConfig):
        channels = pyramid_channels(cfg.cnn_channels, halvings(cfg.N, MIN_CNN_SIZE))
        encoder = [conv_block(group_size(cfg), channels[0], first=InputConv2d)]
        for k in range(1, len(channels)):
            encoder += [nn.AvgPool2d(2), conv_block(channels[k - 1], channels[k])]  # (B, C_k, n/2, n/2)
        super().__init__(cfg, nn.Sequential(*encoder, ConvDecoder(channels)), channels[0])


class FNOGenerator(Generator):
    """Lift (1x1), ``fno_blocks`` spectral blocks, ``fno_cnn_blocks`` 3x3 refiners, then the heads."""

    def __init__(self, cfg: ModelConfig):
        width = cfg.fno_width
        layers: list[nn.Module] = [PointwiseConv2d(group_size(cfg), width)]
        layers += [SpectralBlock(width, cfg.fno_modes) for _ in range(cfg.fno_blocks)]
        for _ in range(cfg.fno_cnn_blocks):
            layers += [nn.Conv2d(width, width, 3, padding=1), DenseGELU()]
        super().__init__(cfg, LiftedSequential(*layers), width)


class HybridGenerator(Generator):
    """Spectral encoder (``fno_blocks`` stages, each halving down to 8x8) and the cnn decoder."""

    def __init__(self, cfg: ModelConfig):
        downsamples = halvings(cfg.N, MIN_HYBRID_SIZE, most=cfg.fno_blocks)
        layers: list[nn.Module] = [PointwiseConv2d(group_size(cfg), cfg.fno_width)]
        size = cfg.N
        for stage in range(cfg.fno_blocks):
            layers.append(SpectralBlock(cfg.fno_width, min(cfg.fno_modes, size // 2)))
            if stage < downsamples:
                layers.append(nn.AvgPool2d(2))  # (B, width, size/2, size/2)
                size //= 2
        channels = pyramid_channels(cfg.cnn_channels, downsamples)
        layers += [PointwiseConv2d(cfg.fno_width, channels[-1]), DenseGELU(), ConvDecoder(channels)]
        super().__init__(cfg, LiftedSequential(*layers), channels[0])


GENERATORS: dict[str, Callable[[ModelConfig], Generator]] = {
    "cnn": CNNGenerator,
    "fno": FNOGenerator,
    "hybrid": HybridGenerator,
}


def build_generator(cfg: ModelConfig) -> Generator:
    """The generator named by ``cfg.architecture``, sized by ``cfg``."""
    return GENERATORS[cfg.architecture](cfg)


def tiny_model_config(architecture: str, N: int = 16, **overrides) -> ModelConfig:
    """A ModelConfig for a small, fast model (tests, smoke runs); ``overrides`` win."""
    sizes = dict(cnn_channels=4, fno_modes=min(4, N // 2), fno_width=8, fno_blocks=2, fno_cnn_blocks=1)
    return ModelConfig(architecture=architecture, N=N, **{**sizes, **overrides})
