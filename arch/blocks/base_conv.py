"""BaseConv, the gated convolution of HazyResearch's recall studies, in its two published forms.

BaseConv (Based, Arora et al. 2024, "Simple linear attention language models balance the
recall-throughput tradeoff"; HazyResearch/based based/models/mixers/convolution.py): a gated short
convolution wrapped in projections.

    u, g = in_proj(x)                             (d -> 2 * d_inner, d_inner = expand * d; paper: d -> 4d)
    y    = silu(causal_conv1d_k(u)) * g           (depthwise, k = 3, with bias)
    out  = out_proj(y)                            (d_inner -> d)

Decode state: the last k - 1 inputs of the convolution [B, d_inner, k - 1].

ZoologyBaseConv (Zoology, Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient
Language Models"; HazyResearch/zoology zoology/mixers/{base_conv,convolution}.py): a convolution of
the input gated by one linear projection of it, with a residual, short or long per layer.

    y = conv(x) * (W x + b) + x                   (W: d x d, with bias; no in/out projection, no activation)
    conv(x) = causal_conv1d_k(x) + c              (short: depthwise, with bias c, kernel_size k >= 1)
    conv(x) = k * x + x                           (long, kernel_size -1: `long_conv` by FFT, taps k [d, l_max],
                                                   plus the skip Zoology's fft_conv adds)
    k = randn(d, l_max)                           (filter "explicit": Zoology's LongConvolution)
    k[:, l] = MLP(z_l), z_l = [t_l, cos(f w_l), -sin(f w_l)]   (filter "implicit", Zoology's default:
        ImplicitLongConvolution; t_l = l / (l_max - 1), w_l = 2 pi l / l_max, f = linspace(1e-4,
        bands - 1, bands), bands = (d_emb - 1) / 2; MLP = Linear(d_emb, d_hidden), ReLU, Linear(d_hidden, d))

Decode state: short, the last k - 1 inputs [B, d, k - 1]; long, the last min(t, l_max - 1) inputs
[B, d, .] seen so far, from which `long_conv_step` computes the next output directly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from arch.blocks.init import init_depthwise_conv_
from arch.ops import causal_conv1d, long_conv, long_conv_step


class BaseConv(nn.Module):
    """Based's gated short convolution (module docstring). The conv is initialised as PyTorch's
    Conv1d (U(+-1/sqrt(k)) for weight and bias)."""

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        expand: float = 2,
        kernel_size: int = 3,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.d_inner, self.kernel_size, self.backend = int(expand * d_model), kernel_size, backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv_weight = nn.Parameter(torch.empty(self.d_inner, kernel_size))
        self.conv_bias = nn.Parameter(torch.empty(self.d_inner)) if conv_bias else None
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        init_depthwise_conv_(self.conv_weight, self.conv_bias)

    def _mix(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        u, gate = self.in_proj(x).chunk(2, dim=-1)
        u, state = causal_conv1d(u, self.conv_weight, self.conv_bias, activation="silu", initial_state=state, backend=self.backend)
        return self.out_proj(u * gate), state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, None)[0]

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.d_inner, self.kernel_size - 1, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._mix(x, state)

    def state_size(self, seq_len: int) -> int:
        return self.d_inner * (self.kernel_size - 1)


def implicit_filter_positions(l_max: int, d_emb: int) -> torch.Tensor:
    """Zoology's positional features of the implicit filter, [l_max, d_emb]: z_l = [t_l, Re e^{-i f w_l},
    Im e^{-i f w_l}], t_l = l / (l_max - 1), w_l = 2 pi l / l_max, f = linspace(1e-4, bands - 1, bands)."""
    if d_emb < 3 or d_emb % 2 == 0:
        raise ValueError(f"d_emb must be odd and >= 3 (time, cosine and sine features), got {d_emb}")
    bands = (d_emb - 1) // 2
    t = torch.linspace(0, 1, l_max)[:, None]
    w = 2 * math.pi * torch.arange(l_max, dtype=torch.float32)[:, None] / l_max
    fw = torch.linspace(1e-4, bands - 1, bands)[None, :] * w
    return torch.cat([t, torch.cos(fw), -torch.sin(fw)], dim=1)


class ZoologyBaseConv(nn.Module):
    """Zoology's BaseConv (module docstring): y = conv(x) * (W x + b) + x, the convolution short or long.

    ``kernel_size``: an int, or a list indexed by ``layer_idx`` (cycled), so that ``[3, -1]`` gives
    the even layers a short conv (k = 3) and the odd ones a long conv, Zoology's Fig. 2 stack; -1
    is a long conv with ``l_max`` taps, which should be at least the longest sequence trained on.
    ``filter`` (long conv only): "implicit" (Zoology's default, a positional MLP with ``d_emb``
    features and ``d_hidden`` units) or "explicit" (``l_max`` free taps per channel, randn).

    Initialisation as Zoology: the language model draws W and the filter MLP's Linears N(0, init_std)
    with zero biases (Zoology's ``_init_weights``, std 0.02); the short conv keeps PyTorch's Conv1d
    initialisation; the explicit filter is randn. Weight decay: Zoology's AdamW decays every
    parameter (weight decay 0.1), filters included; no parameter is exempted here (Hyena's filters
    get wd 0, Zoology's BaseConv does not), and the optimiser's default rule leaves biases undecayed.
    """

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        kernel_size: int | list[int] = 3,
        l_max: int = 2048,
        filter: str = "implicit",
        d_emb: int = 3,
        d_hidden: int = 16,
        backend: str = "auto",
    ):
        super().__init__()
        if isinstance(kernel_size, (list, tuple)):
            kernel_size = kernel_size[layer_idx % len(kernel_size)]
        if kernel_size != -1 and kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, or -1 for a long convolution, got {kernel_size}")
        if filter not in ("implicit", "explicit"):
            raise ValueError(f"filter must be 'implicit' or 'explicit', got {filter!r}")
        self.d_model, self.kernel_size, self.l_max, self.backend = d_model, kernel_size, l_max, backend
        self.filter = filter if kernel_size == -1 else None
        self.d_hidden = d_hidden if self.filter == "implicit" else None
        self.projection = nn.Linear(d_model, d_model)
        if kernel_size > 0:
            self.conv_weight = nn.Parameter(torch.empty(d_model, kernel_size))
            self.conv_bias = nn.Parameter(torch.empty(d_model))
        elif filter == "explicit":
            self.long_filter = nn.Parameter(torch.empty(d_model, l_max))
        else:
            self.register_buffer("filter_positions", implicit_filter_positions(l_max, d_emb), persistent=False)
            self.filter_mlp = nn.Sequential(nn.Linear(d_emb, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_model))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        if self.kernel_size > 0:
            init_depthwise_conv_(self.conv_weight, self.conv_bias)
        elif self.filter == "explicit":
            nn.init.normal_(self.long_filter)

    def filter_taps(self, n: int) -> torch.Tensor:
        """The long conv's first min(n, l_max) taps, [d, .]."""
        if self.filter == "explicit":
            return self.long_filter[:, :n]
        return self.filter_mlp(self.filter_positions[:n]).t()

    def _conv(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kernel_size > 0:
            return causal_conv1d(x, self.conv_weight, self.conv_bias, initial_state=state, backend=self.backend)
        if state is None:
            y, state = long_conv(x, self.filter_taps(x.shape[1]))
        else:
            y, state = long_conv_step(x, self.filter_taps(state.shape[2] + 1), state, max_state=self.l_max - 1)
        return y + x, state

    def _mix(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        conv, state = self._conv(x, state)
        return conv * self.projection(x) + x, state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, None)[0]

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        held = self.kernel_size - 1 if self.kernel_size > 0 else 0  # a long conv's history grows from empty
        return torch.zeros(batch_size, self.d_model, held, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._mix(x, state)

    def state_size(self, seq_len: int) -> int:
        if self.kernel_size > 0:
            return self.d_model * (self.kernel_size - 1)
        return self.d_model * min(seq_len, self.l_max - 1)
