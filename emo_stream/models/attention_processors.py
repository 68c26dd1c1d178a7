"""Attention processors: the weight-free variants of diffusers' ``Attention`` that EMO needs.

Reference attention and scaled audio cross-attention change *what* an ``Attention`` attends to, never its
weights, so they are processors (diffusers' swappable attention math) on the stock ``Attention`` modules of
``BasicTransformerBlock``. The reference processors are stateful: the model that owns them fills their slot
for the duration of one forward call (see ``EmoDenoiser.forward`` and ``ReferenceNet.forward``), so a model
instance must not run two forwards at once (one InferenceWorker per model, as in docs/design.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention


def attend(
    attn: Attention,
    hidden_states: torch.Tensor,
    context: torch.Tensor,
    extra_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Multi-head attention of ``hidden_states`` [B, N, C] over ``context`` [B, M, Cc] with ``attn``'s weights.

    Our ``Attention`` modules carry no norms, masks or residuals (SD-1.5 / AnimateDiff / Hallo all build them
    that way), so this is the whole of diffusers' ``AttnProcessor2_0`` for them, minus the branches.
    ``extra_key_value``: already projected keys/values [B, L, inner] appended after the context's.
    """
    batch = hidden_states.shape[0]
    query = attn.to_q(hidden_states)
    key = attn.to_k(context)
    value = attn.to_v(context)
    if extra_key_value is not None:
        key = torch.cat([key, extra_key_value[0].to(key.dtype)], dim=1)
        value = torch.cat([value, extra_key_value[1].to(value.dtype)], dim=1)
    head_dim = query.shape[-1] // attn.heads
    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(query, key, value)
    out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
    out = attn.to_out[0](out)
    return attn.to_out[1](out)


class ReferenceRecordProcessor:
    """Self-attention of a ReferenceNet block that also records its input (the block's ``norm1`` output).

    ``store`` is set by ``ReferenceNet.forward`` to a dict shared by all blocks; the processor writes its
    input under its block path, which is what the denoiser's same-path block reads back.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.store: dict[str, torch.Tensor] | None = None

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.store is not None:
            self.store[self.name] = hidden_states
        return attend(attn, hidden_states, hidden_states)


class ReferenceAttnProcessor:
    """Self-attention of a denoiser block whose keys/values also cover the cached reference tokens.

    K/V = concat(own tokens, reference tokens of the same block path), as in EchoMimic/Hallo's
    ``ReferenceAttentionControl`` read mode: no extra weights. ``reference`` is [B, L, C] (one portrait per
    batch element, shared by its frames) and ``reference_mask`` [B·F] bool marks the token rows that use it;
    rows without it (the unconditional half of classifier-free guidance) run plain self-attention.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.reference: torch.Tensor | None = None
        self.reference_mask: torch.Tensor | None = None

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        reference = self.reference
        if reference is None:
            return attend(attn, hidden_states, hidden_states)
        rows, batch = hidden_states.shape[0], reference.shape[0]
        if rows % batch:
            raise ValueError(f"{self.name}: {rows} token rows do not split into {batch} reference batches")
        frames = rows // batch
        # Project the reference tokens once per portrait, not once per frame: K/V = [own; reference].
        reference = reference.to(hidden_states.dtype)
        ref_kv = [proj(reference) for proj in (attn.to_k, attn.to_v)]
        ref_kv = [kv[:, None].expand(batch, frames, *kv.shape[1:]).reshape(rows, *kv.shape[1:]) for kv in ref_kv]
        mask = self.reference_mask
        if mask is None or bool(mask.all()):
            return attend(attn, hidden_states, hidden_states, (ref_kv[0], ref_kv[1]))
        row_mask = mask.to(hidden_states.device)
        out = torch.empty_like(hidden_states)
        if bool((~row_mask).any()):
            plain = hidden_states[~row_mask]
            out[~row_mask] = attend(attn, plain, plain).to(out.dtype)  # autocast may return half
        if bool(row_mask.any()):
            cond = hidden_states[row_mask]
            out[row_mask] = attend(attn, cond, cond, (ref_kv[0][row_mask], ref_kv[1][row_mask])).to(out.dtype)
        return out


class AudioAttnProcessor:
    """Cross-attention onto per-frame audio tokens, output scaled (EchoMimic's ``audio_feature_ratio``).

    EchoMimic reuses each spatial block's ``attn2`` for audio and multiplies its output by 3.0; the scale
    is a config value of the denoiser, not a weight.
    """

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is None:
            raise ValueError("audio cross-attention needs audio tokens")
        return attend(attn, hidden_states, encoder_hidden_states) * self.scale
