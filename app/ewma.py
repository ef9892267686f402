"""ConvEWMA: a truncated exponentially weighted moving average as a causal convolution."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, cast, get_args

import torch
from torch import Tensor, nn

from app.fir import causal_conv1d, causal_fir

Warmup = Literal["zeros", "adjust"]
WARMUP_MODES: tuple[str, ...] = get_args(Warmup)
MAX_KERNEL_SIZE = 32


def check_warmup(warmup: str) -> Warmup:
    if warmup not in WARMUP_MODES:
        raise ValueError(f"warmup must be one of {WARMUP_MODES}, got {warmup!r}")
    return cast(Warmup, warmup)


class ConvEWMA(nn.Module):
    r"""Exponentially weighted moving average with a learned smoothing factor per channel.

    Each channel ``c`` keeps a logit; its smoothing factor is
    ``alpha_c = (1 - 2 eps) * sigmoid(logit_c) + eps`` and its kernel is
    ``w_{c,k} = alpha_c (1 - alpha_c)^k`` for lags ``k = 0 .. K-1``.  For a series
    ``x_0 .. x_{T-1}`` (``x_m = 0`` for ``m < 0``) the output is

    * ``warmup="zeros"``, ``normalize=True``: ``y_t = sum_k w_k x_{t-k} / sum_k w_k``
    * ``warmup="zeros"``, ``normalize=False``: ``y_t = sum_k w_k x_{t-k}``
    * ``warmup="adjust"``: ``y_t = sum_{k <= min(t, K-1)} w_k x_{t-k} / sum_{k <= min(t, K-1)} w_k``,
      pandas' ``ewm(adjust=True)`` for ``t < K`` and the normalised output afterwards.
      It is normalised by definition, so ``normalize`` only affects ``"zeros"``.

    Args:
        channels: number of smoothing factors ``C`` (>= 1).
        kernel_size: number of lags ``K``, 1 <= K <= 32.
        normalize: divide the ``"zeros"`` output by the kernel sum so that weights add to 1.
        warmup: ``"zeros"`` or ``"adjust"``; how the first ``K - 1`` outputs are treated.
        eps: keeps every alpha inside ``[eps, 1 - eps]``; 0 < eps < 0.5.
        dropout: channel-dropout probability in training mode (whole channels are
            zeroed and the rest scaled by ``1 / (1 - p)``); 0 <= p < 1.
        alpha: initial smoothing factor, one float for every channel or one per channel,
            each strictly between ``eps`` and ``1 - eps``.
        device, dtype: where and in what precision the logits live.

    Shape:
        - Input ``(N, T)`` or ``(N, 1, T)``: every series is smoothed by every channel
          (a filter bank); output ``(N, C, T)``.
        - Input ``(N, C, T)``: depth-wise, channel ``c`` of each series with ``alpha_c``;
          output ``(N, C, T)``.

    Example::

        >>> layer = ConvEWMA(channels=3, kernel_size=32, alpha=[0.1, 0.3, 0.5])
        >>> layer(torch.randn(8, 1000)).shape
        torch.Size([8, 3, 1000])
    """

    logits: Tensor

    def __init__(
        self,
        channels: int = 1,
        kernel_size: int = MAX_KERNEL_SIZE,
        *,
        normalize: bool = True,
        warmup: str = "zeros",
        eps: float = 1e-6,
        dropout: float = 0.0,
        alpha: float | Sequence[float] = 0.5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be an integer >= 1, got {channels!r}")
        if (
            isinstance(kernel_size, bool)
            or not isinstance(kernel_size, int)
            or not 1 <= kernel_size <= MAX_KERNEL_SIZE
        ):
            raise ValueError(f"kernel_size must be an integer in [1, {MAX_KERNEL_SIZE}], got {kernel_size!r}")
        if not isinstance(eps, (int, float)) or not 0.0 < eps < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {eps!r}")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating point dtype, got {dtype}")
        initial = [float(alpha)] * channels if isinstance(alpha, (int, float)) else list(map(float, alpha))
        if len(initial) != channels:
            raise ValueError(f"alpha has {len(initial)} values for {channels} channels")
        bad = [a for a in initial if not eps < a < 1.0 - eps]
        if bad:
            raise ValueError(f"each alpha must be in ({eps}, {1 - eps}), got {bad}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.normalize = bool(normalize)
        self.warmup: Warmup = check_warmup(warmup)
        self.eps = float(eps)
        self.dropout = float(dropout)
        self._initial_alpha = initial
        self.logits = nn.Parameter(torch.empty(channels, device=device, dtype=dtype))
        self._constants_cache: dict[tuple[object, ...], tuple[Tensor, Tensor | None, Tensor | None]] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Set the logits so that ``alphas`` equals the constructor's ``alpha``."""
        with torch.no_grad():
            scale = 1.0 - 2.0 * self.eps
            logits = [
                math.log((a - self.eps) / scale) - math.log1p(-(a - self.eps) / scale)
                for a in self._initial_alpha
            ]
            self.logits.copy_(torch.tensor(logits, dtype=torch.float64))

    @property
    def alphas(self) -> Tensor:
        """Smoothing factors ``(C,)`` in use, differentiable with respect to the logits."""
        return (1.0 - 2.0 * self.eps) * torch.sigmoid(self.logits) + self.eps

    def kernel(self, dtype: torch.dtype | None = None, *, normalize: bool | None = None) -> Tensor:
        """Kernel ``(C, K)`` in lag order ``w_{c,0} .. w_{c,K-1}`` (not flipped)."""
        alphas = self.alphas
        dtype = dtype or alphas.dtype
        # Build in at least float32 (half precision powers lose the kernel's tail) and in
        # float64 when either side is float64, so a float64 input gets float64 weights.
        work = torch.promote_types(torch.promote_types(alphas.dtype, dtype), torch.float32)
        a = alphas.to(work).unsqueeze(1)
        lags = torch.arange(self.kernel_size, device=a.device, dtype=work)
        weights = a * (1.0 - a).pow(lags)
        if self.normalize if normalize is None else normalize:
            weights = weights / weights.sum(dim=1, keepdim=True)
        return weights.to(dtype)

    def forward(self, x: Tensor, warmup: str | None = None) -> Tensor:
        """Smooth ``x``; ``warmup`` overrides the layer's warm-up mode for this call."""
        mode = self.warmup if warmup is None else check_warmup(warmup)
        if not x.is_floating_point():
            raise ValueError(f"input must be a floating point tensor, got {x.dtype}")
        if x.dim() == 2:
            x = x.unsqueeze(1)
        if x.dim() != 3 or x.shape[1] not in (1, self.channels):
            raise ValueError(
                f"input must be (N, T), (N, 1, T) or (N, {self.channels}, T), got {tuple(x.shape)}"
            )
        taps, fold, start_scale = self._constants(mode, x.dtype, x.device)
        y = self._convolve(x, taps, fold=fold)
        if start_scale is not None:
            y = self._adjust_start(y, start_scale)
        if self.training and self.dropout > 0.0:
            keep = torch.rand(self.channels, device=y.device) >= self.dropout
            y = y * (keep.to(y.dtype) / (1.0 - self.dropout)).view(1, -1, 1)
        return y

    def _constants(
        self, mode: str, dtype: torch.dtype, device: torch.device
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Taps, fold ratios and warm-up rescaling for one call.

        Without autograd they depend only on the logits, so they are cached until the
        logits change (``_version`` counts in-place updates such as optimizer steps or
        ``load_state_dict``): rebuilding them costs more than smoothing a short series.
        """
        if torch.is_grad_enabled() and self.logits.requires_grad:
            return self._build_constants(mode, dtype)
        inference = torch.is_inference_mode_enabled()  # inference tensors stay in inference mode
        key = (mode, dtype, device, inference, self.logits._version, self.logits.data_ptr())
        cached = self._constants_cache.get(key)
        if cached is None:
            if len(self._constants_cache) >= 16:
                self._constants_cache.clear()
            with torch.no_grad():
                cached = self._build_constants(mode, dtype)
            self._constants_cache[key] = cached
        return cached

    def _build_constants(self, mode: str, dtype: torch.dtype) -> tuple[Tensor, Tensor | None, Tensor | None]:
        if mode != "adjust":
            return self.kernel(dtype), self._fold_ratios(dtype), None
        # The rescaling uses float64 taps: their partial sums divide the first K - 1 outputs.
        taps = self.kernel(torch.float64, normalize=True)
        partial = taps.cumsum(dim=1)[:, : self.kernel_size - 1]  # the full sum is 1
        return taps.to(dtype), self._fold_ratios(dtype), (1.0 / partial).to(dtype)

    def _fold_ratios(self, dtype: torch.dtype) -> Tensor | None:
        """``(1 - alpha)^(K/2)``: a geometric kernel's second half is its first half scaled."""
        if self.kernel_size % 2:
            return None
        work = torch.promote_types(torch.promote_types(self.logits.dtype, dtype), torch.float32)
        return (1.0 - self.alphas.detach().to(work)).pow(self.kernel_size // 2)

    def _convolve(self, x: Tensor, taps: Tensor, fold: Tensor | None = None) -> Tensor:
        depthwise = x.shape[1] == self.channels and self.channels > 1
        if torch.is_grad_enabled() and (x.requires_grad or taps.requires_grad):
            return causal_conv1d(x, taps, groups=self.channels if depthwise else 1)
        if not depthwise:
            return causal_fir(x[:, 0], taps, fold=fold)
        out = x.new_empty(x.shape)
        for c in range(self.channels):
            ratio = None if fold is None else fold[c : c + 1]
            out[:, c] = causal_fir(x[:, c], taps[c : c + 1], fold=ratio)[:, 0]
        return out

    def _adjust_start(self, y: Tensor, scale: Tensor) -> Tensor:
        """Rescale outputs t < K-1 from the full-kernel sum to the partial sum."""
        head = min(scale.shape[-1], y.shape[-1])
        if head == 0:
            return y
        scale = scale[:, :head].unsqueeze(0)
        if y.requires_grad:
            return torch.cat([y[..., :head] * scale, y[..., head:]], dim=-1)
        y[..., :head] *= scale
        return y

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, kernel_size={self.kernel_size}, normalize={self.normalize}, "
            f"warmup={self.warmup!r}, eps={self.eps}, dropout={self.dropout}"
        )
