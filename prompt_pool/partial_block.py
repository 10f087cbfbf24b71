"""Run a ViT block for a few output rows: what a pooled head reads from the last block.

A classifier on a ViT reads only a few rows of the last block's output: the [CLS] row (the L2P query,
the 'cls' head) or the prompt rows (the 'prompt' head). Every token still serves as a key and value, but
the queries, the attention output, the projection and the MLP are needed for those rows only::

    n = norm1(h)                                    # (B, T, D), all tokens
    q = n[:, rows] W_q      k, v = n W_k, n W_v     # (B, R, A), (B, T, A) each
    x = h[:, rows] + proj(attn(q, k, v))            # (B, R, D)
    x = x + mlp(norm2(x))                           # (B, R, D) == block(h)[:, rows]

For R of T rows this skips (T - R) / T of the block's projections and MLP (with T = 27 and R = 1 on the
digits ViT, ~80% of the last block). The result equals ``block(h)[:, rows]`` up to float rounding (the
GEMMs see other shapes), and gradients flow to ``h`` exactly as through the full block.
"""

from __future__ import annotations

import torch.nn.functional as F
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block
from torch import Tensor, nn


def supports_rows(block: nn.Module) -> bool:
    """True when :func:`block_rows` knows ``block``'s forward (timm's plain pre-norm ``Block``)."""
    return type(block) is Block and type(block.attn) is Attention


def block_rows(block: nn.Module, h: Tensor, start: int, stop: int) -> Tensor:
    """``block(h)[:, start:stop]``, computing queries, attention output and MLP for those rows only.

    Args:
        block: a timm ViT block; blocks :func:`supports_rows` does not know run in full, then sliced.
        h: block input (B, T, D).
        start: first output row.
        stop: one past the last output row.

    Returns:
        (B, stop - start, D).
    """
    if not supports_rows(block):
        return block(h)[:, start:stop]
    attn: Attention = block.attn  # type: ignore[assignment]
    bsz, t, _ = h.shape
    r, a, heads = stop - start, attn.attn_dim, attn.num_heads
    n = block.norm1(h)  # (B, T, D)
    w, b = attn.qkv.weight, attn.qkv.bias  # (3A, D), (3A,) or None
    q = F.linear(n[:, start:stop], w[:a], None if b is None else b[:a])  # (B, R, A)
    kv = F.linear(n, w[a:], None if b is None else b[a:])  # (B, T, 2A)
    q = q.reshape(bsz, r, heads, attn.head_dim).transpose(1, 2)  # (B, H, R, hd)
    k, v = kv.reshape(bsz, t, 2, heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, T, hd)
    q, k = attn.q_norm(q), attn.k_norm(k)
    o = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    o = attn.norm(o.transpose(1, 2).reshape(bsz, r, a))  # (B, R, A)
    if attn.gate is not None:
        o = o * attn.gate(n[:, start:stop]).sigmoid()
    x = h[:, start:stop] + block.drop_path1(block.ls1(attn.proj_drop(attn.proj(o))))  # (B, R, D)
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
