"""The compression-decompression module of Prune-Deprune (arXiv 2311.05739, §3.1) and its losses.

The client runs a :class:`Compressor` (resolution encoder, learnable channel filter f, top-B channel
selection); the server runs a :class:`Decompressor` that scatters the B received channels back and
restores the exact activation shape the server part expects.
"""

from __future__ import annotations

import math
from numbers import Integral

import torch
from torch import Tensor, nn

MASKS: tuple[str, ...] = ("sigmoid", "sigmoid_squared")
FILTER_INITS: tuple[str, ...] = ("zeros", "authors")
RESET_KINDS: tuple[str, ...] = ("deprune", "prune")
VARIANTS: tuple[str, ...] = ("paper", "authors")

# What amudvari/VCCprune (models/compressorVGG.py, deprune.py) uses where the paper is silent.
AUTHORS_BN_MOMENTUM = 0.03
AUTHORS_BN_EPS = 1e-4
AUTHORS_RESET_THRESHOLD_LOGIT = 0.9  # resets compare the raw f_hat (not f) with this
AUTHORS_RESET_NOISE_MAX_LOGIT = 3.0  # re-learned entries restart uniform in [0, this)


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def _batch_norm(num_channels: int, variant: str) -> nn.BatchNorm2d:
    """BatchNorm2d with PyTorch's defaults ("paper") or the authors' momentum 0.03, eps 1e-4."""
    if variant == "authors":
        return nn.BatchNorm2d(num_channels, momentum=AUTHORS_BN_MOMENTUM, eps=AUTHORS_BN_EPS)
    return nn.BatchNorm2d(num_channels)


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _encoded_size(size: int, resolution_factor: int) -> int:
    """Spatial size after Conv2d(kernel 2+r, stride r, padding r): floor((size + r - 2) / r) + 1."""
    r = resolution_factor
    return (size + r - 2) // r + 1


def encoded_shape(
    in_shape: tuple[int, int, int], resolution_factor: int, out_channels: int | None = None
) -> tuple[int, int, int]:
    """Shape (phi, h, w) of the encoder output for an activation of shape (phi_tilde, H, W)."""
    if len(in_shape) != 3:
        raise ValueError(f"in_shape must be (channels, height, width), got {in_shape!r}")
    for name, value in zip(("channels", "height", "width"), in_shape, strict=True):
        _check_positive_int(f"in_shape {name}", value)
    _check_positive_int("resolution_factor", resolution_factor)
    if out_channels is not None:
        _check_positive_int("out_channels", out_channels)
    channels, height, width = in_shape
    return (
        out_channels if out_channels is not None else channels,
        _encoded_size(height, resolution_factor),
        _encoded_size(width, resolution_factor),
    )


class Compressor(nn.Module):
    """Client side: resolution encoder + learnable channel filter f + top-B selection (paper §3.1).

    The paper's form is the default. ``variant="authors"`` follows amudvari/VCCprune's code and
    ignores ``mask``, ``encoder_sigmoid`` and ``filter_init`` (partial options kept for ablations),
    but for two differences: the wire codec rounds after the mask (theirs rounds to fp16 before
    it), and exactly B channels go (their np.partition on tied masks can let more through).
    """

    def __init__(
        self,
        in_channels: int,
        resolution_factor: int = 1,
        out_channels: int | None = None,
        mask: str = "sigmoid",
        encoder_sigmoid: bool = False,
        filter_init: str = "zeros",
        filter_scale: float = 15.0,
        variant: str = "paper",
    ) -> None:
        super().__init__()
        _check_variant(variant)
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("resolution_factor", resolution_factor)
        if out_channels is not None:
            _check_positive_int("out_channels", out_channels)
        if mask not in MASKS:
            raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
        if filter_init not in FILTER_INITS:
            raise ValueError(f"filter_init must be one of {FILTER_INITS}, got {filter_init!r}")
        if not (math.isfinite(filter_scale) and filter_scale > 0):
            raise ValueError(f"filter_scale must be a finite number > 0, got {filter_scale!r}")
        r = resolution_factor
        self.in_channels = in_channels
        self.resolution_factor = r
        self.num_channels: int = out_channels if out_channels is not None else in_channels
        self.variant = variant
        # The authors' variant has its own mask (see forward) and always a sigmoid encoder.
        self.mask = "sigmoid_squared" if variant == "authors" else mask
        self.encoder_sigmoid = encoder_sigmoid or variant == "authors"
        self.filter_scale = float(filter_scale)
        self.conv = nn.Conv2d(
            in_channels, self.num_channels, kernel_size=2 + r, stride=r, padding=r
        )
        self.bn = _batch_norm(self.num_channels, variant)
        self.filter_logits = nn.Parameter(torch.zeros(self.num_channels))
        if filter_init == "authors" or variant == "authors":
            with torch.no_grad():
                self.filter_logits.uniform_(0.0, self.filter_scale)

    def filter_values(self) -> Tensor:
        """f = mask(f_hat), shape (phi,), differentiable w.r.t. f_hat: what the prune loss sums.

        For the authors' variant this is their mask m = sigmoid(f_hat)^2.
        """
        f = torch.sigmoid(self.filter_logits)
        return f * f if self.mask == "sigmoid_squared" else f

    def _ranked_channels(self) -> Tensor:
        """Channel indices by decreasing f, ties broken by lower index.

        Both masks are strictly increasing in f_hat, so ranking f_hat gives the order of f exactly,
        without the ties that float32 saturation of the sigmoid creates near f = 1.
        """
        return torch.sort(self.filter_logits.detach(), descending=True, stable=True).indices

    def selected_channels(self, budget: int) -> Tensor:
        """Indices (long, ascending) of the ``budget`` channels with the largest f."""
        phi = self.num_channels
        if isinstance(budget, bool) or not isinstance(budget, Integral) or not 1 <= budget <= phi:
            raise ValueError(f"budget must be an int in 1..{phi}, got {budget!r}")
        return torch.sort(self._ranked_channels()[: int(budget)]).values

    def forward(self, x: Tensor, budget: int) -> tuple[Tensor, Tensor]:
        """Encode ``x`` and return (sent, indices): channels f_k * l_hat_k of the top-``budget`` f.

        ``sent`` has shape (N, budget, h, w); the gradient reaches f_hat only through them. The
        authors' variant sends sigmoid(f_hat_k) * l_hat_k * m_k with m = sigmoid(f_hat)^2 detached.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"input must have shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        indices = self.selected_channels(budget).to(x.device)
        encoded = self.bn(self.conv(x))
        if self.encoder_sigmoid:
            encoded = torch.sigmoid(encoded)
        if self.variant == "authors":
            return self._authors_sent(encoded, indices), indices
        # Multiplying only the selected channels equals selecting from l_c = f * l_hat.
        f_sent = self.filter_values().index_select(0, indices)
        sent = encoded.index_select(1, indices) * f_sent.view(1, -1, 1, 1)
        return sent.contiguous(), indices

    def _authors_sent(self, encoded: Tensor, indices: Tensor) -> Tensor:
        """(sigmoid(l_hat) * sigmoid(f_hat)) * m on the sent channels, m = sigmoid(f_hat)^2 constant.

        As in VCCprune's deprune.py: m multiplies the detached activation, and the returned gradient
        is multiplied by m before the client's backward, which is the chain rule through a constant m.
        """
        gate = torch.sigmoid(self.filter_logits)
        mask_sent = (gate * gate).detach().index_select(0, indices)
        sent = encoded.index_select(1, indices) * gate.index_select(0, indices).view(1, -1, 1, 1)
        return (sent * mask_sent.view(1, -1, 1, 1)).contiguous()

    def _channels_on(self, kind: str, previous_budget: int) -> Tensor:
        """Bool (phi,): the channels a reset keeps "on" (the previous top-B, or the authors' test)."""
        on = self.selected_channels(previous_budget)  # also validates previous_budget
        if self.variant == "authors":
            # VCCprune's comparisons, verbatim: resetdePrune re-learns "f_hat < 0.9" (so f_hat >= 0.9
            # and NaN stay on), resetPrune keeps "f_hat > 0.9".
            raw = self.filter_logits.detach()
            if kind == "deprune":
                return ~(raw < AUTHORS_RESET_THRESHOLD_LOGIT)
            return raw > AUTHORS_RESET_THRESHOLD_LOGIT
        is_on = torch.zeros(self.num_channels, dtype=torch.bool, device=self.filter_logits.device)
        is_on[on.to(is_on.device)] = True
        return is_on

    @torch.no_grad()
    def reset_filter(
        self, kind: str, previous_budget: int, generator: torch.Generator | None = None
    ) -> None:
        """Reset f_hat when the budget changes (Prune-Deprune §3.2/§3.3).

        "deprune" (to a larger budget): channels on at ``previous_budget`` get +filter_scale, the
        rest uniform [0, filter_scale) so they can be re-learned. "prune" (to a smaller budget): the
        on channels get uniform [0, filter_scale), the rest -filter_scale. The authors' variant
        instead calls a channel on by its raw f_hat (deprune f_hat >= 0.9, prune f_hat > 0.9) and
        draws the noise from [0, 3).
        """
        if kind not in RESET_KINDS:
            raise ValueError(f"reset kind must be one of {RESET_KINDS}, got {kind!r}")
        is_on = self._channels_on(kind, previous_budget)
        noise_max = AUTHORS_RESET_NOISE_MAX_LOGIT if self.variant == "authors" else self.filter_scale
        device = generator.device if generator is not None else self.filter_logits.device
        noise = torch.rand(self.num_channels, generator=generator, device=device)
        noise = (noise * noise_max).to(self.filter_logits)
        if kind == "deprune":
            new = torch.where(is_on, torch.full_like(noise, self.filter_scale), noise)
        else:
            new = torch.where(is_on, noise, torch.full_like(noise, -self.filter_scale))
        self.filter_logits.copy_(new)


class Decompressor(nn.Module):
    """Server side: scatter the sent channels back, then ConvTranspose2d (mirroring the encoder),
    BatchNorm and ReLU restore the activation shape the server part expects."""

    def __init__(
        self,
        out_shape: tuple[int, int, int],
        num_channels: int,
        resolution_factor: int = 1,
        variant: str = "paper",
    ) -> None:
        super().__init__()
        _check_positive_int("num_channels", num_channels)
        _check_variant(variant)
        _, height_enc, width_enc = encoded_shape(out_shape, resolution_factor, num_channels)
        channels, height, width = out_shape
        r = resolution_factor
        # ConvTranspose2d gives (h - 1) r - 2r + (2 + r) + p = h r - r + 2 + p. Writing
        # H + r - 2 = q r + s (0 <= s < r), h = q + 1 and that is H - s + p, so output_padding p = s
        # restores H exactly and always satisfies PyTorch's p < stride: no shape is impossible.
        padding_out = ((height + r - 2) % r, (width + r - 2) % r)
        self.out_shape = (channels, height, width)
        self.num_channels = num_channels
        self.resolution_factor = r
        self.encoded_size = (height_enc, width_enc)
        self.deconv = nn.ConvTranspose2d(
            num_channels,
            channels,
            kernel_size=2 + r,
            stride=r,
            padding=r,
            output_padding=padding_out,
        )
        self.variant = variant
        self.bn = _batch_norm(channels, variant)

    def forward(self, sent: Tensor, indices: Tensor) -> Tensor:
        """Rebuild the (N, phi_tilde, H, W) activation; unsent channels enter the deconv as 0."""
        h, w = self.encoded_size
        phi = self.num_channels
        if sent.dim() != 4 or sent.shape[2:] != (h, w) or sent.shape[1] > phi:
            raise ValueError(
                f"sent must have shape (N, B <= {phi}, {h}, {w}), got {tuple(sent.shape)}"
            )
        if indices.dim() != 1 or indices.numel() != sent.shape[1]:
            raise ValueError(
                f"indices must be 1-D of length {sent.shape[1]}, got {tuple(indices.shape)}"
            )
        full = sent.new_zeros(sent.shape[0], self.num_channels, h, w)
        full = full.index_copy(1, indices.to(device=sent.device, dtype=torch.long), sent)
        return torch.relu(self.bn(self.deconv(full)))


def prune_loss(f: Tensor, budget: int, delta: float, lam: float) -> Tensor:
    """Equation 1: exp(delta (sum f - B)) + lam exp(-delta (sum f - B)), a two-sided soft budget."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1] (paper eq. 1), got {lam!r}")
    excess = delta * (f.sum() - budget)
    return torch.exp(excess) + lam * torch.exp(-excess)


def total_loss(task_loss: Tensor, prune: Tensor, epsilon: float) -> Tensor:
    """Equation 2: task loss + epsilon * prune loss."""
    if not epsilon >= 0.0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
    return task_loss + epsilon * prune
