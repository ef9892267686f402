"""ConvEWMA: a truncated exponentially weighted moving average as a causal convolution."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, cast, get_args

import torch
from torch import Tensor, nn

from app.core.fir import causal_conv1d, causal_fir
from app.core.gaps import (
    pack_observed,
    prestart_mass,
    unpack,
    window_counts,
    without_short_head,
    without_short_windows,
)

Warmup = Literal["zeros", "adjust"]
WARMUP_MODES: tuple[str, ...] = get_args(Warmup)
Gaps = Literal["decay", "skip"]
GAP_MODES: tuple[str, ...] = get_args(Gaps)
MAX_KERNEL_SIZE = 32
# Inputs per slice of rows on the gap-aware paths (without autograd): their arrays beyond
# the output then take at most about 16 bytes per channel per value of a slice, a few
# tens of MB (app/serving/budget.py counts it).
GAP_WORKSPACE_VALUES = 1 << 18


def check_warmup(warmup: str) -> Warmup:
    if warmup not in WARMUP_MODES:
        raise ValueError(f"warmup must be one of {WARMUP_MODES}, got {warmup!r}")
    return cast(Warmup, warmup)


def check_gaps(gaps: str) -> Gaps:
    if gaps not in GAP_MODES:
        raise ValueError(f"gaps must be one of {GAP_MODES}, got {gaps!r}")
    return cast(Gaps, gaps)


def _positive_int(name: str, value: object, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _near_the_maximum(x: Tensor, top: Tensor, bottom: Tensor, gappy: Tensor) -> bool:
    """Whether any input is within 1e-4 (relative) of the largest finite value of its dtype."""
    limit = 0.9999 * torch.finfo(x.dtype).max  # compared in float64: in float16 it rounds up
    if bool(((top.double() > limit) | (bottom.double() < -limit)).any()):
        return True
    if not bool(gappy.any()):
        return False
    known = torch.nan_to_num(x[gappy], nan=0.0)  # the row extremes above are NaN
    return bool(known.amax().double() > limit) or bool(known.amin().double() < -limit)


def equivalents(alpha: float, kernel_size: int) -> dict[str, float]:
    """pandas' ``span``, ``halflife`` and ``com`` for ``alpha``, and the kernel mass that
    K taps drop, ``(1 - alpha)^K``."""
    return {
        "span": 2.0 / alpha - 1.0,
        "halflife": math.log(0.5) / math.log1p(-alpha),
        "com": 1.0 / alpha - 1.0,
        "truncated_mass": (1.0 - alpha) ** kernel_size,
    }


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

    With a dilation ``d`` tap ``k`` reads ``x_{t-kd}`` (receptive field ``(K-1)d + 1``).
    NaN inputs are missing values: the sums run over the observed lags only (the
    positions before the start count as observed zeros in ``"zeros"``), which is pandas'
    ``ewm(adjust=True, ignore_na=False)`` for ``t < K``; ``gaps="skip"`` is its
    ``ignore_na=True``. Outputs with fewer than ``min_periods`` real observations in their
    window (or none) are NaN. Without normalisation a missing value contributes nothing.

    Args:
        channels: number of smoothing factors ``C`` (>= 1).
        kernel_size: number of lags ``K``, 1 <= K <= 32.
        normalize: divide the ``"zeros"`` output by the kernel sum so that weights add to 1.
        warmup: ``"zeros"`` or ``"adjust"``; how the first ``K - 1`` outputs are treated.
        dilation: lag between taps ``d`` (>= 1), a property of a trained model.
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
        - With ``stride=s`` the output keeps positions ``0, s, 2s, ..``: ``ceil(T / s)`` of them.

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
        dilation: int = 1,
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
        _positive_int("dilation", dilation)
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
        self.dilation = dilation
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
    def receptive_field(self) -> int:
        """Inputs one output can see: ``(K - 1) * dilation + 1``."""
        return (self.kernel_size - 1) * self.dilation + 1

    @property
    def alphas(self) -> Tensor:
        """Smoothing factors ``(C,)`` in use, differentiable with respect to the logits."""
        return self._alphas_in(self.logits.dtype)

    def _alphas_in(self, dtype: torch.dtype) -> Tensor:
        return (1.0 - 2.0 * self.eps) * torch.sigmoid(self.logits.to(dtype)) + self.eps

    def kernel(self, dtype: torch.dtype | None = None, *, normalize: bool | None = None) -> Tensor:
        """Kernel ``(C, K)`` in lag order ``w_{c,0} .. w_{c,K-1}`` (not flipped)."""
        dtype = dtype or self.logits.dtype
        # Build in at least float32 (half precision powers lose the kernel's tail) and in
        # float64 when either side is float64, so a float64 input gets float64 weights,
        # from alphas computed in float64 too (float32 logits are exact in float64).
        work = torch.promote_types(torch.promote_types(self.logits.dtype, dtype), torch.float32)
        a = self._alphas_in(work).unsqueeze(1)
        lags = torch.arange(self.kernel_size, device=a.device, dtype=work)
        weights = a * (1.0 - a).pow(lags)
        if self.normalize if normalize is None else normalize:
            weights = weights / weights.sum(dim=1, keepdim=True)
        return weights.to(dtype)

    def forward(
        self,
        x: Tensor,
        warmup: str | None = None,
        *,
        gaps: str = "decay",
        min_periods: int = 1,
        stride: int = 1,
    ) -> Tensor:
        """Smooth ``x`` (NaN = missing); ``warmup`` overrides the layer's mode for this call."""
        mode = self.warmup if warmup is None else check_warmup(warmup)
        gap_mode = check_gaps(gaps)
        if isinstance(min_periods, bool) or not isinstance(min_periods, int):
            raise ValueError(f"min_periods must be an integer, got {min_periods!r}")
        if not 0 <= min_periods <= self.kernel_size:
            raise ValueError(f"min_periods must be in [0, {self.kernel_size}], got {min_periods}")
        _positive_int("stride", stride)
        if not x.is_floating_point():
            raise ValueError(f"input must be a floating point tensor, got {x.dtype}")
        if x.dim() == 2:
            x = x.unsqueeze(1)
        if x.dim() != 3 or x.shape[1] not in (1, self.channels):
            raise ValueError(
                f"input must be (N, T), (N, 1, T) or (N, {self.channels}, T), got {tuple(x.shape)}"
            )
        # Row maxima and minima are NaN where a row holds a NaN: two fast reductions
        # instead of a boolean pass.
        top, bottom = x.amax(dim=-1), x.amin(dim=-1)
        gappy = torch.isnan(top).any(dim=1)
        if x.dtype != torch.float64 and _near_the_maximum(x, top, bottom, gappy):
            # Every output is a weighted mean of inputs, so it stays in range, but rounding
            # in a narrow float can carry one just past the maximum (to infinity); float64
            # rounding is far finer than the narrow format's last place.
            wide = self.forward(x.double(), warmup, gaps=gaps, min_periods=min_periods, stride=stride)
            return wide.to(x.dtype)
        if not bool(gappy.any()):
            y = self._dense(x, mode, min_periods)
        elif torch.is_grad_enabled():
            y = self._with_gaps(x, mode, gap_mode, min_periods)
        else:
            # The gap-aware paths hold a few arrays as large as their output: run them a
            # slice of rows at a time into the output, so that their working memory stays
            # bounded (GAP_WORKSPACE_VALUES) however large the batch; a slice without a
            # gap takes the plain path.
            y = x.new_empty(x.shape[0], self.channels, x.shape[2])
            rows = max(1, GAP_WORKSPACE_VALUES // max(1, x.shape[2]))
            for first in range(0, x.shape[0], rows):
                part = slice(first, first + rows)
                if bool(gappy[part].any()):
                    y[part] = self._with_gaps(x[part], mode, gap_mode, min_periods)
                else:
                    y[part] = self._dense(x[part], mode, min_periods)
        if mode == "adjust" and x.dtype != torch.float64:
            y = self._exact_start(x, y, gap_mode if bool(gappy.any()) else None, min_periods)
        if self.training and self.dropout > 0.0:
            keep = torch.rand(self.channels, device=y.device) >= self.dropout
            y = y * (keep.to(y.dtype) / (1.0 - self.dropout)).view(1, -1, 1)
        return y if stride == 1 else y[..., ::stride].contiguous()

    def _exact_start(self, x: Tensor, y: Tensor, gaps: str | None, min_periods: int) -> Tensor:
        """The first ``(K-1)d`` outputs of ``adjust``, whose windows are partial, again in
        float64 (they depend only on the first ``(K-1)d`` inputs), rounded once: so the
        first output is the first input exactly, as in pandas."""
        head = min(x.shape[-1], (self.kernel_size - 1) * self.dilation)
        if head == 0:
            return y
        part = x[..., :head].double()
        exact = (
            self._dense(part, "adjust", min_periods)
            if gaps is None
            else self._with_gaps(part, "adjust", gaps, min_periods)
        ).to(y.dtype)
        if y.requires_grad:
            return torch.cat([exact, y[..., head:]], dim=-1)
        y[..., :head] = exact
        return y

    def _dense(self, x: Tensor, mode: str, min_periods: int) -> Tensor:
        taps, fold, start_scale = self._constants(mode, x.dtype, x.device)
        y = self._convolve(x, taps, fold=fold)
        if start_scale is not None:
            y = self._adjust_start(y, start_scale)
        return without_short_head(y, min_periods, self.dilation)

    def _with_gaps(self, x: Tensor, mode: str, gaps: str, min_periods: int) -> Tensor:
        observed = torch.isnan(x).logical_not_()
        if gaps == "skip":
            packed, last = pack_observed(x, observed)
            return unpack(self._dense(packed, mode, min_periods), last)
        taps, fold, _ = self._constants(mode, x.dtype, x.device)
        inf = float("inf")
        numerator = self._convolve(torch.nan_to_num(x, nan=0.0, posinf=inf, neginf=-inf), taps, fold=fold)
        present = observed.to(x.dtype)
        raw = mode == "zeros" and not self.normalize
        mass = prestart_mass(taps, self.dilation, x.shape[-1]) if mode == "zeros" else None
        if not (numerator.requires_grad or raw or min_periods > 1) and bool(taps.min() > 0):
            # The common case, in place (each pass over (N, C, T) costs about as much as a
            # FIR). With every tap positive, a window without an observation is exactly
            # the one whose weight is 0; its numerator is 0 too, and 0 / 0 marks it NaN.
            weight = self._convolve(present, taps, fold=fold)
            if mass is None:
                return numerator.div_(weight)
            head = mass.shape[-1]  # the positions before the start are observed zeros
            empty = weight[..., :head] == 0
            weight[..., :head] += mass
            numerator.div_(weight)
            numerator[..., :head].masked_fill_(empty, float("nan"))
            return numerator
        counts = window_counts(present, self.kernel_size, self.dilation)
        if raw:
            return without_short_windows(numerator, counts, min_periods)
        weight = self._convolve(present, taps, fold=fold)
        if not numerator.requires_grad:
            if mass is not None:
                weight[..., : mass.shape[-1]] += mass
            # A weight that underflows to 0 leaves a 0 numerator: divide by anything positive.
            numerator.div_(weight.clamp_(min=torch.finfo(x.dtype).tiny))
            return numerator.masked_fill_(counts < max(1, min_periods), float("nan"))
        if mass is not None:
            weight = torch.cat([weight[..., : mass.shape[-1]] + mass, weight[..., mass.shape[-1] :]], dim=-1)
        # Dividing by 1 where the weight is 0 keeps the gradient finite under the NaN mask.
        y = numerator / torch.where(weight > 0, weight, torch.ones((), dtype=x.dtype, device=x.device))
        return without_short_windows(y, counts, min_periods)

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
        # Output t of a dilated filter sees lags up to t // d: d outputs share each sum.
        # Kept in float64 (applied in float64, below): a float32 output near the float32
        # maximum times a float32 1 / partial can round past it to infinity.
        scale = (1.0 / partial).repeat_interleave(self.dilation, dim=1)
        return taps.to(dtype), self._fold_ratios(dtype), scale

    def _fold_ratios(self, dtype: torch.dtype) -> Tensor | None:
        """``(1 - alpha)^(K/2)``: a geometric kernel's second half is its first half scaled."""
        if self.kernel_size % 2:
            return None
        work = torch.promote_types(torch.promote_types(self.logits.dtype, dtype), torch.float32)
        return (1.0 - self._alphas_in(work).detach()).pow(self.kernel_size // 2)

    def _convolve(self, x: Tensor, taps: Tensor, fold: Tensor | None = None) -> Tensor:
        depthwise = x.shape[1] == self.channels and self.channels > 1
        if torch.is_grad_enabled() and (x.requires_grad or taps.requires_grad):
            return causal_conv1d(x, taps, groups=self.channels if depthwise else 1, dilation=self.dilation)
        if not depthwise:
            return self._fir(x[:, 0], taps, fold)
        out = x.new_empty(x.shape)
        for c in range(self.channels):
            ratio = None if fold is None else fold[c : c + 1]
            out[:, c] = self._fir(x[:, c], taps[c : c + 1], ratio)[:, 0]
        return out

    def _fir(self, x: Tensor, taps: Tensor, fold: Tensor | None) -> Tensor:
        return causal_fir(x, taps, fold=fold, dilation=self.dilation)

    def _adjust_start(self, y: Tensor, scale: Tensor) -> Tensor:
        """Rescale outputs t < K-1 from the full-kernel sum to the partial sum."""
        head = min(scale.shape[-1], y.shape[-1])
        if head == 0:
            return y
        scale = scale[:, :head].unsqueeze(0)
        start = (y[..., :head].to(scale.dtype) * scale).to(y.dtype)
        if y.requires_grad:
            return torch.cat([start, y[..., head:]], dim=-1)
        y[..., :head] = start
        return y

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, kernel_size={self.kernel_size}, normalize={self.normalize}, "
            f"warmup={self.warmup!r}, dilation={self.dilation}, eps={self.eps}, dropout={self.dropout}"
        )
