"""ConvEWMA: a truncated exponentially weighted moving average as a causal convolution."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, cast, get_args

import torch
from torch import Tensor, nn

from app.core.filters import START_BANK_LIMIT, Filter, exact_start, smooth, start_bank
from app.core.fir import into
from app.core.gaps import prestart_mass
from app.core.timed import TimeDecay, check_times, smooth_times

Warmup = Literal["zeros", "adjust"]
WARMUP_MODES: tuple[str, ...] = get_args(Warmup)
Gaps = Literal["decay", "skip"]
GAP_MODES: tuple[str, ...] = get_args(Gaps)
MAX_KERNEL_SIZE = 32


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


def _near_the_maximum(x: Tensor, peak: float, top: Tensor, bottom: Tensor, gappy: Tensor | None) -> bool:
    """Whether any input is within 1e-4 (relative) of the largest finite value of its dtype
    (``peak``: the largest magnitude, NaN when a value is missing)."""
    limit = 0.9999 * torch.finfo(x.dtype).max  # compared in float64: in float16 it rounds up
    if gappy is None:
        return peak > limit
    if bool(((top.double() > limit) | (bottom.double() < -limit)).any()):
        return True
    rows = x if bool(gappy.all()) else x[gappy]  # (a boolean index copies)
    known = torch.nan_to_num(rows, nan=0.0)  # the row extremes above are NaN
    return bool(known.amax().double() > limit) or bool(known.amin().double() < -limit)


def _beyond(x: Tensor, limit: float) -> bool:
    """Whether any input's magnitude exceeds ``limit`` (missing values aside)."""
    low, high = torch.aminmax(x.detach())
    peak = max(-float(low), float(high))
    if math.isnan(peak):  # a missing value: the extremes of the known ones
        peak = float(x.detach().nan_to_num(nan=0.0).abs().amax())
    return peak > limit


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
        time_unit: seconds per step of ``alpha`` when ``forward`` is given ``times``: lag ``k``
            then weighs ``(1 - alpha) ** (age / time_unit)``, ``age`` its elapsed seconds.
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
        time_unit: float = 1.0,
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
        if (
            isinstance(time_unit, bool)
            or not isinstance(time_unit, (int, float))
            or not 0 < time_unit < math.inf
        ):
            raise ValueError(f"time_unit must be a finite number of seconds > 0, got {time_unit!r}")
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
        self.time_unit = float(time_unit)
        self.eps = float(eps)
        self.dropout = float(dropout)
        self._initial_alpha = initial
        self.logits = nn.Parameter(torch.empty(channels, device=device, dtype=dtype))
        self._filter_cache: dict[tuple[object, ...], Filter] = {}
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
        weights = weights.to(dtype)
        if dtype != torch.float64:
            # A fast channel's tail taps fall below the narrow dtype's smallest normal
            # number (alpha 0.96 in float32: lags >= 27). They carry under 1e-38 of the
            # kernel, but subnormal operands made oneDNN's convolution 10x slower
            # (2.3 ms instead of 0.18 for 16 x 1024 values, 4 channels): flushed to zero.
            weights = weights.masked_fill(weights < torch.finfo(dtype).tiny, 0.0)
        return weights

    def forward(
        self,
        x: Tensor,
        warmup: str | None = None,
        *,
        gaps: str = "decay",
        min_periods: int = 1,
        stride: int = 1,
        times: Tensor | None = None,
        max_gap: float | None = None,
        out: Tensor | None = None,
    ) -> Tensor:
        """Smooth ``x`` (NaN = missing); ``warmup`` overrides the layer's mode for this call.

        ``times`` ``(N, T)``, strictly increasing seconds: each lag decays by the time that
        passed (``time_unit``); a lag older than ``max_gap`` seconds is out of the window.
        ``out``: a contiguous tensor of the output's shape, dtype and device to write into
        (without autograd), so that repeated calls touch no fresh memory; the plain path
        writes its GEMMs straight into it, the others copy their result.
        """
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
        if out is not None:
            self._check_out(x, out, stride)
        if x.shape[-1] == 0:
            return x.new_empty(x.shape[0], self.channels, 0) if out is None else out
        if times is not None or max_gap is not None:
            y = self._smooth_times(x, times, mode, gap_mode, min_periods, max_gap)
            return into(y if stride == 1 else y[..., ::stride].contiguous(), out)
        # Row maxima and minima are NaN where a row holds a NaN: two fast reductions
        # instead of a boolean pass, and one number (one sync) for the common case.
        top, bottom = x.detach().amax(dim=-1), x.detach().amin(dim=-1)
        peak = float(torch.maximum(top.amax(), bottom.amin().neg()))
        gappy = torch.isnan(top).any(dim=1) if math.isnan(peak) else None
        if x.dtype != torch.float64 and _near_the_maximum(x, peak, top, bottom, gappy):
            # Every output is a weighted mean of inputs, so it stays in range, but rounding
            # in a narrow float can carry one just past the maximum (to infinity); float64
            # rounding is far finer than the narrow format's last place.
            wide = self.forward(x.double(), warmup, gaps=gaps, min_periods=min_periods, stride=stride)
            return into(wide.to(x.dtype), out)
        # The plain and gap-aware paths write their output into `out` itself.
        direct = out if stride == 1 and not (self.training and self.dropout > 0.0) else None
        y = smooth(x, self._filter(mode, x.dtype, x.device), gap_mode, min_periods, gappy, direct)
        if mode == "adjust" and x.dtype != torch.float64:
            # The windows of the first (K-1)d outputs are partial: computed again in
            # float64 and rounded once, so that the first output is the first input
            # exactly, as in pandas.
            exact = self._filter("adjust", torch.float64, x.device)
            y = exact_start(x, y, exact, gap_mode, min_periods, gaps_possible=gappy is not None)
        y = self._channel_dropout(y)
        return into(y if stride == 1 else y[..., ::stride].contiguous(), out)

    def _check_out(self, x: Tensor, out: Tensor, stride: int) -> None:
        """``out`` for ``x`` ``(N, 1 or C, T)``: the output's shape, dtype and device, contiguous."""
        if torch.is_grad_enabled() and (x.requires_grad or self.logits.requires_grad):
            raise ValueError("out= is for inference: call under torch.no_grad() or torch.inference_mode()")
        expected = (x.shape[0], self.channels, -(-x.shape[-1] // stride))
        if tuple(out.shape) != expected or out.dtype != x.dtype or out.device != x.device:
            raise ValueError(
                f"out must be {expected} {x.dtype} on {x.device}, "
                f"got {tuple(out.shape)} {out.dtype} on {out.device}"
            )
        if not out.is_contiguous():
            raise ValueError("out must be contiguous")

    def _smooth_times(
        self, x: Tensor, times: Tensor | None, mode: str, gaps: str, min_periods: int, max_gap: float | None
    ) -> Tensor:
        if times is None:
            raise ValueError("max_gap needs times")
        if max_gap is not None and (isinstance(max_gap, bool) or not 0 < max_gap <= math.inf):
            raise ValueError(f"max_gap must be a number of seconds > 0, got {max_gap!r}")
        tau = check_times(times, x)
        work = torch.promote_types(x.dtype, torch.float32)  # half precision powers lose the tail
        if work != torch.float64 and _beyond(x, torch.finfo(work).max / (2 * self.kernel_size)):
            # The window sums weigh up to K values before they are divided: near the
            # largest finite value they would overflow in the narrow dtype.
            work = torch.float64
        options = TimeDecay(
            self.kernel_size, self.dilation, mode, self.normalize, min_periods, self.time_unit, max_gap
        )
        y = smooth_times(x.to(work), tau, self._alphas_in(work), options, gaps).to(x.dtype)
        return self._channel_dropout(y)

    def _channel_dropout(self, y: Tensor) -> Tensor:
        if self.training and self.dropout > 0.0:
            keep = torch.rand(self.channels, device=y.device) >= self.dropout
            y = y * (keep.to(y.dtype) / (1.0 - self.dropout)).view(1, -1, 1)
        return y

    def _filter(self, mode: str, dtype: torch.dtype, device: torch.device) -> Filter:
        """Taps, fold ratios and warm-up rescaling for one call.

        Without autograd they depend only on the logits, so they are cached until the
        logits change (``_version`` counts in-place updates such as optimizer steps or
        ``load_state_dict``): rebuilding them costs more than smoothing a short series.
        """
        if torch.is_grad_enabled() and self.logits.requires_grad:
            return self._build_filter(mode, dtype)
        inference = torch.is_inference_mode_enabled()  # inference tensors stay in inference mode
        key = (mode, dtype, device, inference, self.logits._version, self.logits.data_ptr())
        cached = self._filter_cache.get(key)
        if cached is None:
            if len(self._filter_cache) >= 16:
                self._filter_cache.clear()
            with torch.no_grad():
                cached = self._build_filter(mode, dtype)
            self._filter_cache[key] = cached
        return cached

    def _build_filter(self, mode: str, dtype: torch.dtype) -> Filter:
        fold = self._fold_ratios(dtype)
        if mode != "adjust":
            taps = self.kernel(dtype)
            head = (self.kernel_size - 1) * self.dilation
            prestart = prestart_mass(taps, self.dilation, head)  # built once, not per call
            return Filter(taps, fold, None, mode, self.normalize, self.dilation, prestart=prestart)
        # The rescaling uses float64 taps: their partial sums divide the first K - 1 outputs.
        taps = self.kernel(torch.float64, normalize=True)
        partial = taps.cumsum(dim=1)[:, : self.kernel_size - 1]  # the full sum is 1
        # Output t of a dilated filter sees lags up to t // d: d outputs share each sum.
        scale = (1.0 / partial).repeat_interleave(self.dilation, dim=1)
        bank = None
        if dtype == torch.float64 and scale.shape[1] <= START_BANK_LIMIT and not torch.is_grad_enabled():
            bank = start_bank(taps, scale, self.dilation)
        narrow = taps if dtype == torch.float64 else self.kernel(dtype, normalize=True)  # flushed
        return Filter(narrow, fold, scale, mode, True, self.dilation, bank)

    def _fold_ratios(self, dtype: torch.dtype) -> Tensor | None:
        """``(1 - alpha)^(K/2)``: a geometric kernel's second half is its first half scaled."""
        if self.kernel_size % 2:
            return None
        work = torch.promote_types(torch.promote_types(self.logits.dtype, dtype), torch.float32)
        return (1.0 - self._alphas_in(work).detach()).pow(self.kernel_size // 2)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, kernel_size={self.kernel_size}, normalize={self.normalize}, "
            f"warmup={self.warmup!r}, dilation={self.dilation}, eps={self.eps}, dropout={self.dropout}"
            + (f", time_unit={self.time_unit}" if self.time_unit != 1.0 else "")
        )
