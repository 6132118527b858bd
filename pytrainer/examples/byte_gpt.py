"""A small GPT over bytes (vocabulary 256): embeddings, pre-norm transformer
blocks with causal attention, and a language-model head tied to the embedding."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ByteGPTConfig", "ByteGPT"]


@dataclass
class ByteGPTConfig:
    n_layer: int = field(default=4, metadata={"help": "Transformer blocks."})
    n_head: int = field(default=4, metadata={"help": "Attention heads per block."})
    n_embd: int = field(default=128, metadata={"help": "Width of the model."})
    block_size: int = field(default=128, metadata={"help": "Bytes of context per sample."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout probability."})

    def __post_init__(self):
        for name in ("n_layer", "n_head", "n_embd", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")


class Block(nn.Module):
    def __init__(self, config: ByteGPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = nn.Sequential(nn.Linear(config.n_embd, 4 * config.n_embd), nn.GELU(),
                                 nn.Linear(4 * config.n_embd, config.n_embd))
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))
        return x + self.drop(self.mlp(self.ln_2(x)))


class ByteGPT(nn.Module):
    """forward(input_ids, labels=None, num_items_in_batch=None) -> {"loss", "logits"}.

    ``labels`` are the next bytes, already aligned with ``input_ids`` (position i
    predicts labels[i]), -100 where no target. The loss sums the token losses and
    divides by ``num_items_in_batch`` when the Trainer passes the target count of
    a whole accumulation window, else by this batch's targets."""

    loss_shifts_labels = False

    def __init__(self, config: ByteGPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(256, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, 256, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                num_items_in_batch: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        t = input_ids.shape[1]
        if t > self.config.block_size:
            raise ValueError(f"sequence of {t} bytes exceeds block_size={self.config.block_size}")
        positions = torch.arange(t, device=input_ids.device)
        x = self.drop(self.wte(input_ids.long()) + self.wpe(positions))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        out = {"logits": logits}
        if labels is not None:
            total = F.cross_entropy(logits.float().flatten(0, 1), labels.long().flatten(),
                                    ignore_index=-100, reduction="sum")
            count = num_items_in_batch if num_items_in_batch is not None else labels.ne(-100).sum()
            out["loss"] = total / count
        return out

    @torch.no_grad()
    def generate(self, prompt: bytes, length: int, temperature: float = 0.8,
                 generator: torch.Generator | None = None) -> bytes:
        device = next(self.parameters()).device
        ids = torch.tensor(list(prompt) or [10], device=device)[None]
        for _ in range(length):
            logits = self(ids[:, -self.config.block_size:])["logits"][0, -1].float()
            probs = torch.softmax(logits / temperature, dim=-1).cpu()
            nxt = torch.multinomial(probs, 1, generator=generator).to(device)
            ids = torch.cat([ids, nxt[None]], dim=1)
        return bytes(ids[0].tolist())
