"""The language model: token embedding -> n_layers pre-norm residual layers -> final norm -> head.

Layers are built from a pattern of block names cycled over ``n_layers`` (``layers: [mamba, mamba,
swa]`` gives Samba's 2:1 interleaving) with per-index overrides; each name refers to an entry of
``blocks`` (a ``_target_`` mapping, validated against the block's signature).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from arch.blocks.mlp import Identity
from arch.blocks.moe import Experts
from arch.config import ConfigError, bounded, from_mapping, instantiate
from arch.ops import linear_cross_entropy


@dataclass
class ModelConfig:
    """Schema of ``conf/model/*.yaml``: every key a preset may set."""

    name: str = "model"
    d_model: int = bounded(256, gt=0)
    n_layers: int = bounded(4, gt=0)
    vocab_size: int | None = bounded(None, gt=0)  # None: taken from the data (tokenizer)
    layers: list[str] = field(default_factory=lambda: ["attention"])
    overrides: dict[int, str] | None = None  # {layer index: block name}
    mlp: str | list[str | None] | None = "swiglu"  # block name of the channel mixer (a list is cycled over layers); None: no MLP sublayer
    blocks: dict[str, Any] = field(default_factory=dict)
    tie_embeddings: bool = True
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    norm_eps: float = bounded(1e-5, gt=0)
    parallel: bool = False  # GPT-J / BAM style: mixer and MLP read the same normed input
    position: Literal["none", "learned"] = "none"  # absolute positions added to the embedding
    max_seq_len: int = bounded(2048, gt=0)  # only used by learned positions
    init_std: float = bounded(0.02, gt=0)
    # the training loss's head + cross-entropy, this many tokens at a time (arch.ops.cross_entropy:
    # no [tokens, vocab] logits beyond one chunk); None: one unfused F.cross_entropy over all logits
    loss_chunk_size: int | None = bounded(1024, gt=0)
    # recompute each layer's activations in the backward pass instead of keeping them (training only)
    activation_checkpointing: bool = False

    def layer_names(self) -> list[str]:
        """Block name of every layer: the pattern cycled, then the overrides."""
        if not self.layers:
            raise ConfigError("model.layers is empty: name at least one block, e.g. model.layers=[attention].")
        names = [self.layers[i % len(self.layers)] for i in range(self.n_layers)]
        for idx, name in (self.overrides or {}).items():
            if not 0 <= int(idx) < self.n_layers:
                raise ConfigError(f"model.overrides has layer index {idx}, but n_layers={self.n_layers} (valid 0..{self.n_layers - 1}).")
            names[int(idx)] = name
        return names

    def mlp_names(self) -> list[str | None]:
        """Channel-mixer block name of every layer (None: none): ``mlp`` itself, or its list cycled
        (``mlp: [swiglu, moe]`` puts an MoE in every other layer, as Jamba)."""
        if not isinstance(self.mlp, list):
            return [self.mlp] * self.n_layers
        if not self.mlp:
            raise ConfigError("model.mlp is an empty list: name a channel mixer per layer, null for none, or set model.mlp=null.")
        return [self.mlp[i % len(self.mlp)] for i in range(self.n_layers)]


def _norm(kind: str, d: int, eps: float) -> nn.Module:
    return nn.RMSNorm(d, eps=eps) if kind == "rmsnorm" else nn.LayerNorm(d, eps=eps)


class Layer(nn.Module):
    """x + mixer(norm(x)), then x + mlp(norm(x)); or x + mixer(h) + mlp(h), h = norm(x), when parallel.

    A mixer whose class sets ``uses_shared = True`` also gets ``shared``: a dict made fresh for every
    forward (or decode step) of the model and handed to its layers in order, the one channel between
    layers (RWKV-7's value residual reads the first RWKV-7 layer's values from it).
    """

    def __init__(self, mixer: nn.Module, mlp: nn.Module | None, d_model: int, norm: str, eps: float, parallel: bool):
        super().__init__()
        self.norm1, self.mixer = _norm(norm, d_model, eps), mixer
        self.mlp = None if mlp is None or isinstance(mlp, Identity) else mlp
        self.parallel = parallel and self.mlp is not None
        self.norm2 = _norm(norm, d_model, eps) if self.mlp is not None and not self.parallel else None
        self.shares = getattr(mixer, "uses_shared", False)

    def _combine(self, x: torch.Tensor, h: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
        if self.mlp is None:
            return x + mixed
        if self.parallel:
            return x + mixed + self.mlp(h)
        x = x + mixed
        return x + self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor, shared: dict | None = None) -> torch.Tensor:
        h = self.norm1(x)
        return self._combine(x, h, self.mixer(h, shared=shared) if self.shares else self.mixer(h))

    def step(self, x: torch.Tensor, state: Any, shared: dict | None = None) -> tuple[torch.Tensor, Any]:
        h = self.norm1(x)
        mixed, state = self.mixer.step(h, state, shared=shared) if self.shares else self.mixer.step(h, state)
        return self._combine(x, h, mixed), state


class LanguageModel(nn.Module):
    """Decoder-only LM over any mix of blocks.

    Initialisation: every Linear and Embedding weight ~ N(0, init_std), biases 0, norms 1; each
    residual branch's ``out_proj`` ~ N(0, init_std / sqrt(N)), N the number of residual branches
    (GPT-2's "1/sqrt(N) where N is the number of residual layers": 2 n_layers with an MLP sublayer,
    n_layers without) so the residual stream's variance does not grow with depth. A block whose
    reference keeps PyTorch's default Linear init sets ``default_linear_init = True``: its Linear
    layers are drawn U(+-1/sqrt(fan_in)) (``out_proj`` then divided by sqrt(N), as mamba_ssm's
    ``_init_weights`` does with Kaiming-uniform). Blocks with special parameters (decay rates, time
    steps) then re-initialise them in their own ``init_weights()``.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ConfigError("model.vocab_size is not set: pass it, or let train.py take it from the tokenizer.")
        self.config = config
        d = config.d_model
        layers = []
        depth = {"n_layers": config.n_layers}  # for the blocks that take it (depth-dependent init, e.g. RWKV's)
        for idx, (name, mlp_name) in enumerate(zip(config.layer_names(), config.mlp_names())):
            if name not in config.blocks:
                raise ConfigError(
                    f"Layer {idx} asks for block '{name}', which is not in model.blocks (defined: {', '.join(sorted(config.blocks))}). "
                    f"Add it to the preset's defaults, or on the command line with +block@model.blocks.{name}={name}."
                )
            mixer = instantiate(config.blocks[name], f"model.blocks.{name}", offered=depth, d_model=d, layer_idx=idx)
            mlp = None
            if mlp_name is not None:
                if mlp_name not in config.blocks:
                    defined = ", ".join(sorted(config.blocks))
                    raise ConfigError(f"model.mlp names '{mlp_name}' (layer {idx}), which is not in model.blocks (defined: {defined}).")
                mlp = instantiate(config.blocks[mlp_name], f"model.blocks.{mlp_name}", offered=depth, d_model=d, layer_idx=idx)
            layers.append(Layer(mixer, mlp, d, config.norm, config.norm_eps, config.parallel))
        self.embedding = nn.Embedding(config.vocab_size, d)
        self.pos_embedding = nn.Embedding(config.max_seq_len, d) if config.position == "learned" else None
        self.layers = nn.ModuleList(layers)
        self.norm = _norm(config.norm, d, config.norm_eps)
        self.head = nn.Linear(d, config.vocab_size, bias=False)
        self.reset_parameters()
        if config.tie_embeddings:
            self.head.weight = self.embedding.weight

    @classmethod
    def from_config(cls, values: dict, **overrides: Any) -> "LanguageModel":
        """Build from a plain mapping (a composed ``model`` config), validating every key."""
        return cls(from_mapping(ModelConfig, {**values, **overrides}, "model"))

    def reset_parameters(self) -> None:
        std = self.config.init_std
        branches = sum(1 + (layer.mlp is not None) for layer in self.layers)
        # blocks whose reference keeps PyTorch's default Linear init (mamba_ssm's `_init_weights`)
        default_init = {id(m) for block in self.modules() if getattr(block, "default_linear_init", False) for m in block.modules()}
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                scale = 1 / math.sqrt(branches) if name.endswith("out_proj") else 1.0
                if id(module) in default_init:
                    module.reset_parameters()  # weight U(+-1/sqrt(fan_in))
                    module.weight.data.mul_(scale)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                    continue
                nn.init.normal_(module.weight, std=std * scale)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, Experts):  # stacked expert matrices: initialised as the Linears they stand for
                nn.init.normal_(module.weight, std=std * (1 / math.sqrt(branches) if name.endswith("out_proj") else 1.0))
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
        for module in self.modules():
            if module is not self and hasattr(module, "init_weights"):
                module.init_weights()

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (shared tensors once); ``non_embedding`` leaves out token and position tables."""
        params = {id(p): p for p in self.parameters()}
        if non_embedding:
            params.pop(id(self.embedding.weight), None)
            if self.pos_embedding is not None:
                params.pop(id(self.pos_embedding.weight), None)
        return sum(p.numel() for p in params.values())

    def _embed(self, input_ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        x = self.embedding(input_ids)
        if self.pos_embedding is not None:
            t = input_ids.shape[1]
            if start + t > self.config.max_seq_len:
                raise ValueError(
                    f"sequence of {start + t} tokens exceeds model.max_seq_len={self.config.max_seq_len} of the learned positions"
                )
            x = x + self.pos_embedding(torch.arange(start, start + t, device=input_ids.device))
        return x

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden states [B, T, d_model] for token ids [B, T]."""
        x, shared = self._embed(input_ids), {}
        recompute = self.config.activation_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            x = torch.utils.checkpoint.checkpoint(layer, x, shared, use_reentrant=False) if recompute else layer(x, shared)
        return self.norm(x)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, vocab] for token ids [B, T]."""
        return self.head(self.hidden_states(input_ids))

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """Auxiliary losses (MoE load balance, router z-loss) left by blocks during the last forward,
        summed per name over layers; the trainer adds them to the loss and logs them."""
        total: dict[str, torch.Tensor] = {}
        for module in self.modules():
            for name, value in getattr(module, "aux_loss", {}).items():
                total[name] = total.get(name, 0) + value
        return total

    def block_stats(self) -> dict[str, torch.Tensor]:
        """Diagnostics (not losses) left by blocks in their ``stats`` dict during the last forward,
        e.g. an MoE layer's expert load; a block puts its layer index in the names, so they are
        unique. The trainer logs them as ``train/<name>``."""
        stats: dict[str, torch.Tensor] = {}
        for module in self.modules():
            stats.update(getattr(module, "stats", {}))
        return stats

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (nats/token) over positions whose label is not -100. The head is
        applied only at labelled positions, which makes sparse-label tasks such as MQAR cheap; with
        ``loss_chunk_size`` (the default) head and loss run chunk by chunk (`linear_cross_entropy`)."""
        h = self.hidden_states(input_ids)
        mask = labels != -100
        if bool(mask.all()):  # every label valid: no gather
            h, labels = h.reshape(-1, h.shape[-1]), labels.reshape(-1)
        else:
            h, labels = h[mask], labels[mask]
        if self.config.loss_chunk_size is not None:
            return linear_cross_entropy(h, self.head.weight, labels, self.config.loss_chunk_size)
        logits = self.head(h)
        return F.cross_entropy(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, labels)

    def objective(self, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """What training minimises: (total, cross-entropy `loss`, the auxiliary losses the forward left),
        total = cross-entropy + the sum of the auxiliary losses (MoE/MoA/MoH balance and z-losses)."""
        loss = self.loss(input_ids, labels)
        aux = self.aux_losses()
        return (loss + sum(aux.values()) if aux else loss), loss, aux

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        """Empty decode state: one entry per layer plus the position counter."""
        dtype = dtype or self.embedding.weight.dtype
        device = device or self.embedding.weight.device
        return {"pos": 0, "layers": [layer.mixer.init_state(batch_size, device, dtype) for layer in self.layers]}

    def step(self, input_ids: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """Logits [B, 1, vocab] for one token per sequence [B, 1], continuing from ``state``."""
        x, shared = self._embed(input_ids, start=state["pos"]), {}
        new_layers = []
        for layer, layer_state in zip(self.layers, state["layers"]):
            x, layer_state = layer.step(x, layer_state, shared)
            new_layers.append(layer_state)
        return self.head(self.norm(x)), {"pos": state["pos"] + 1, "layers": new_layers}

    def state_size(self, seq_len: int) -> int:
        """Numbers held per sequence by a decode after ``seq_len`` tokens, summed over layers."""
        return sum(layer.mixer.state_size(seq_len) for layer in self.layers)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue prompts [B, T0] by ``max_new_tokens`` tokens, decoding with per-layer state
        (the prompt is consumed token by token through ``step``). temperature 0 is greedy."""
        state = self.init_state(input_ids.shape[0])
        logits = None
        for t in range(input_ids.shape[1]):
            logits, state = self.step(input_ids[:, t : t + 1], state)
        out = [input_ids]
        for _ in range(max_new_tokens):
            last = logits[:, -1].float()
            if temperature == 0:
                nxt = last.argmax(-1, keepdim=True)
            else:
                last = last / temperature
                if top_k is not None:
                    kth = last.topk(top_k, dim=-1).values[:, -1:]
                    last = last.masked_fill(last < kth, float("-inf"))
                nxt = torch.multinomial(last.softmax(-1), 1, generator=generator)
            out.append(nxt)
            logits, state = self.step(nxt, state)
        return torch.cat(out, dim=1)
