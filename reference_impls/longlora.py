"""LongLoRA: LoRA plus trainable embeddings and norms, trained with shifted sparse attention (S²-Attn).

Equation:   LoRA on W_q, W_k, W_v, W_o:   h = W0 x + (alpha / r) B A x      (B = 0 at init)
            the input embedding matrix and every RMSNorm gain are trained too
            S²-Attn (training only), sequence length T, group size G = group_size_ratio * T (G divides T):
              heads 0 .. H/2-1:  attention within the groups [0, G), [G, 2G), ...           (causal inside)
              heads H/2 .. H-1:  the same after rolling the tokens by -G/2 (torch.roll), so that their
                                 groups straddle the others' borders; the output is rolled back by +G/2
            at inference (eval mode) the attention is the model's own full attention, unchanged.
Trainable:  r * (d_in + d_out) per targeted module; 2 * d_model per layer (two RMSNorms);
            vocab_size * d_model + d_model (embeddings, final norm)
                                     (catalog: trainable_params.per_target, .per_layer, .total)
Paper:      "LongLoRA: Efficient Fine-tuning of Long-Context Large Language Models", Yukang Chen et al., 2023
            (ICLR 2024), arXiv 2309.12307.

Llama-family decoders only: S²-Attn replaces the core of the attention of each block, which this file
re-implements for LlamaAttention (q, k, v projections, rotary embedding, grouped-query heads, o
projection); other architectures are refused. The embeddings and norms are trained as copies beside the
frozen originals (as ln_tuning.py does), so the base model stays intact and merge() swaps the copies in.

Deviations and limits: the roll wraps around, as in the paper's pseudo-code (Algorithm 1) and the authors'
non-flash attention: in the shifted heads the last group holds the last G/2 and the first G/2 tokens,
so during training the first G/2 tokens can see the last ones (the authors' flash-attention path uses
variable-length groups instead and does not wrap). Both directions shift by G // 2 (the authors' code rolls
by -G // 2, which for odd G is one more than the G // 2 it rolls back). Padding is respected by masking
padded keys (read from the attention mask's last row). The paper's position interpolation (RoPE scaling
to the target length) is a model-config change, not part of this file. With tied input and output
embeddings only the input side gets the trained copy.

Checked against: the paper §3.2 (S²-Attn: half of the heads shifted by half a group; Algorithm 1's roll,
grouped reshape and roll back) and §3.3 (LoRA+: embeddings and normalisation layers trainable); the
authors' code github.com/dvlab-research/LongLoRA (llama_attn_replace.py @ 03ac8a5: group_size_ratio 1/4,
forward_noflashattn's shift and shift-back; fine-tune.py @ 2a33f37: LoraConfig r=8, lora_alpha=16,
target_modules q_proj, k_proj, v_proj, o_proj, trainable_params "embed,norm"). peft 0.21 has no LongLoRA.
Numeric pin: test_longlora.py recomputes S²-Attn token by token (each query's softmax over the keys of its
own, possibly shifted, group) on a small input.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reference_impls._core import CACHE_KWARGS, Wrapper, family, freeze_base, replace_module, replace_modules
from reference_impls.ln_tuning import TunedNorm
from reference_impls.lora import LoRALinear


#: model types whose attention is Llama's (projections, rotary embedding, grouped-query heads, nothing more);
#: Qwen3 and OLMo-2 add q/k norms and Gemma soft-capping, which S2Attention does not reproduce
LLAMA_ATTENTION = ("llama", "mistral", "qwen2")


@dataclass
class LongLoRAConfig:
    r: int = 8                                      # LoRA rank (authors' fine-tune.py)
    alpha: float = 16                               # the LoRA update is scaled by alpha / r
    group_size_ratio: float = 0.25                  # S²-Attn group size as a share of the sequence length
    target_modules: tuple[str, ...] = ("q", "k", "v", "o")  # the attention projections


def shifted_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group_size: int, scaling: float,
                             key_keep: torch.Tensor | None = None) -> torch.Tensor:
    """S²-Attn. q, k, v: (B, H, T, D), k and v already repeated to H heads; key_keep: (B, T) bool, False on
    padded keys. Returns (B, T, H, D)."""
    B, H, T, D = q.shape
    G, s, h = group_size, group_size // 2, H // 2
    n = T // G  # number of groups

    def shift(x: torch.Tensor) -> torch.Tensor:  # (B, H, T, ...) -> the second half of the heads rolled by -G/2
        return torch.cat([x[:, :h], x[:, h:].roll(-s, dims=2)], dim=1)

    def group(x: torch.Tensor) -> torch.Tensor:  # (B, H, T, D) -> (B*n, H, G, D)
        return shift(x).transpose(1, 2).reshape(B * n, G, H, D).transpose(1, 2)

    scores = group(q) @ group(k).transpose(-1, -2) * scaling  # (B*n, H, G, G)
    allowed = torch.ones(G, G, dtype=torch.bool, device=q.device).tril()  # causal inside a group
    if key_keep is not None:
        keep = shift(key_keep[:, None, :].expand(B, H, T))  # (B, H, T), rolled like the keys
        keep = keep.reshape(B, H, n, G).transpose(1, 2).reshape(B * n, H, 1, G)
        allowed = allowed & keep
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)  # min, not -inf: no NaN rows
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = (probs @ group(v)).transpose(1, 2).reshape(B, T, H, D)  # (B*n, G, H, D) -> (B, T, H, D)
    return torch.cat([out[:, :, :h], out[:, :, h:].roll(s, dims=1)], dim=2)  # roll the shifted heads back


class S2Attention(Wrapper):
    """A LlamaAttention that uses S²-Attn in training mode and its own forward otherwise."""

    def __init__(self, base: nn.Module, group_size_ratio: float) -> None:
        super().__init__()
        self.base = base
        self.group_size_ratio = group_size_ratio

    def group_size(self, T: int) -> int:
        G = int(T * self.group_size_ratio)
        if G < 1 or T % G:
            raise ValueError(f"S²-Attn: sequence length {T} is not a multiple of its group size {G} "
                             f"(group_size_ratio {self.group_size_ratio})")
        return G

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None = None, **kwargs):
        if not self.training:
            return self.base(hidden_states, position_embeddings=position_embeddings,
                             attention_mask=attention_mask, **kwargs)
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

        att = self.base
        B, T, _ = hidden_states.shape
        G = self.group_size(T)
        q = att.q_proj(hidden_states).view(B, T, -1, att.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = att.k_proj(hidden_states).view(B, T, -1, att.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        v = att.v_proj(hidden_states).view(B, T, -1, att.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        cache = next((kwargs[n] for n in CACHE_KWARGS if kwargs.get(n) is not None), None)
        if cache is not None:  # keep a cache the caller passed consistent; S²-Attn itself sees whole sequences
            k, v = cache.update(k, v, att.layer_idx)
            if k.shape[-2] != T:
                raise ValueError("S²-Attn trains on whole sequences; it cannot continue from cached tokens")
        k, v = repeat_kv(k, att.num_key_value_groups), repeat_kv(v, att.num_key_value_groups)  # (B, H, T, D)
        out = shifted_sparse_attention(q, k, v, G, att.scaling, _key_keep(attention_mask, T))  # (B, T, H, D)
        return att.o_proj(out.reshape(B, T, -1)), None


def _key_keep(mask: torch.Tensor | None, T: int) -> torch.Tensor | None:
    """(B, T) bool, False on padded keys, from HF's 4-D attention mask (its last query row sees every
    unpadded key); None when the model passes no mask (no padding)."""
    if mask is None or mask.dim() != 4:
        return None
    last = mask[:, 0, -1, -T:]  # (B, T)
    return last if mask.dtype == torch.bool else last == 0


def apply(model: nn.Module, config: LongLoRAConfig) -> nn.Module:
    model_type = getattr(model.config, "model_type", "?")
    if model_type not in LLAMA_ATTENTION:
        raise ValueError(f"LongLoRA's S²-Attn re-implements Llama's attention (model types {', '.join(LLAMA_ATTENTION)}); "
                         f"this is a {model_type} model ({family(model)} family)")
    freeze_base(model)
    replace_modules(model, config.target_modules, lambda t: LoRALinear(t.module, config.r, config.alpha))
    names = [n for n, m in model.named_modules() if type(m).__name__.endswith("Attention") and hasattr(m, "q_proj")]
    for name in names:
        replace_module(model, name, S2Attention(model.get_submodule(name), config.group_size_ratio))
    # the authors' fine-tune.py unfreezes every parameter whose name contains "embed" or "norm": the input
    # embeddings and the RMSNorm gains (input_layernorm, post_attention_layernorm, the final norm)
    trained = [n for n, m in model.named_modules()
               if isinstance(m, nn.Embedding) and n.endswith("embed_tokens") or type(m).__name__.endswith("RMSNorm")]
    for name in trained:
        replace_module(model, name, TunedNorm(model.get_submodule(name)))  # a trainable copy beside the original
    return model
