"""Step 3 of :func:`mobileclip2.optimize`: causal text towers stop at the end-of-text token.

In a causal text transformer pooled at the end-of-text token (open_clip's TextTransformer with its
causal mask: MobileCLIP-B, MobileCLIP2-B), no position attends to later ones, so the tokens after
the last end-of-text token of a batch cannot change the embedding; they are not computed. A typical
caption is 10-20 of the 77 tokens. Bidirectional towers (``no_causal_mask``: MobileCLIP2-S0/S2/S3/
S4/L-14; MobileCLIP-S0's MCt) are left as they are.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CausalPrefixText", "is_causal_mask", "truncate_causal_text"]


def _prefix_length(length: int, limit: int, multiple: int) -> int:
    """``length`` rounded up to a multiple (fewer distinct shapes for compiled code), at most ``limit``."""
    return min(limit, -(-length // multiple) * multiple)


class PrefixEncoder(nn.Module):
    """open_clip's TextTransformer.forward (open_clip_torch 2.24 - 3.3, causal mask, no CLS token,
    pooled at the end-of-text token) on a token prefix: written from open_clip's
    ``TextTransformer._embeds`` / ``forward`` / ``text_global_pool``, equal outputs checked in
    tests/test_optimize.py. The blocks get the causal mask cut to the prefix, the way ``_embeds``
    cuts the positional embedding. A module of its own so that ``torch.compile`` sees it whole.
    """

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        tower = self.tower
        length = tokens.shape[1]
        cast_dtype = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(tokens).to(cast_dtype)
        x = x + tower.positional_embedding[:length].to(cast_dtype)
        mask = tower.attn_mask[:length, :length]
        for block in tower.transformer.resblocks:
            # Our oneDNN blocks take the causal flag directly (SDPA's is_causal, no mask check).
            x = (
                block(x, is_causal=True)
                if getattr(block, "takes_is_causal", False)
                else block(x, attn_mask=mask)
            )
        x = tower.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), index]
        projection = tower.text_projection
        if projection is None:
            return pooled
        return projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection


class CausalPrefixText(nn.Module):
    """A causal text tower run on the shortest prefix (rounded up to ``multiple``) holding every
    row's pooled token; the tokens after it cannot reach the pooled position."""

    def __init__(self, tower: nn.Module, multiple: int = 8):
        super().__init__()
        self.encoder = PrefixEncoder(tower)
        self.multiple = multiple
        self.pool_type = tower.pool_type
        self.eos_id = getattr(tower, "eos_id", None)
        self.context_length = tower.context_length
        self.vocab_size = getattr(tower, "vocab_size", None)
        self.output_dim = getattr(tower, "output_dim", None)
        self.output_tokens = False

    @staticmethod
    def supports(tower: nn.Module) -> bool:
        needed = (
            "token_embedding",
            "positional_embedding",
            "transformer",
            "ln_final",
            "attn_mask",
            "pool_type",
        )
        if not all(hasattr(tower, name) for name in needed) or not isinstance(tower.attn_mask, torch.Tensor):
            return False
        return (
            tower.pool_type in ("argmax", "eos")
            and getattr(tower, "cls_emb", None) is None
            and not getattr(tower, "output_tokens", False)
            and not getattr(tower, "use_pad_mask", False)
            and isinstance(getattr(tower.transformer, "resblocks", None), nn.ModuleList)
            and getattr(tower.transformer, "batch_first", True)
            and is_causal_mask(tower.attn_mask)
        )

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "argmax":
            index = text.argmax(dim=-1)
        else:
            index = (text == self.eos_id).int().argmax(dim=-1)
        length = _prefix_length(int(index.max()) + 1, text.shape[1], self.multiple)
        return self.encoder(text[:, :length], index)


def truncate_causal_text(model: nn.Module, multiple: int = 8) -> nn.Module:
    """Step 3 in place: a causal ``model.text`` computes only the tokens up to the pooled one.

    ``multiple`` rounds the prefix length up (16: five shapes for 77 tokens, which keeps
    ``torch.compile`` and CUDA graphs from seeing a new shape per caption). Returns ``model``.
    """
    text = getattr(model, "text", None)
    if isinstance(text, nn.Module) and CausalPrefixText.supports(text):
        model.text = CausalPrefixText(text, multiple)
    return model


def is_causal_mask(attn_mask: torch.Tensor | None) -> bool:
    """An additive (L, L) mask that blocks exactly the future: SDPA's ``is_causal`` does the same."""
    if attn_mask is None or attn_mask.dim() != 2 or attn_mask.dtype == torch.bool:
        return False
    future = torch.ones(attn_mask.shape, dtype=torch.bool, device=attn_mask.device).triu(1)
    return bool(torch.equal(torch.isinf(attn_mask) & (attn_mask < 0), future)) and bool(
        (attn_mask.masked_fill(future, 0) == 0).all()
    )
