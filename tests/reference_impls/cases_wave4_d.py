"""Cases for wave 4, helper d: ReLoRA, LongLoRA, MTL-LoRA, FRoD, ShadowPEFT, Super-Tuning."""
from __future__ import annotations

from impl_cases import Case, make_config

LLAMA = ("tiny-llama",)

CASES = {
    # r = 4; B = 0 at init. A restart every 10 steps with a 2-step re-warm-up: the 3-step frozen-weights
    # check ends before the first merge (which changes W on purpose), the 30-step loss check runs through two
    "relora": Case(make_config("relora", r=4, alpha=8, reset_every=10, restart_warmup_steps=2),
                   starts_equal=True, mergeable=True),
    # r = 4 on q, k, v, o, plus trainable copies of the embeddings and RMSNorms; Llama only (S²-Attn
    # re-implements Llama's attention). The 12-token batch makes 4 groups of 3 in training
    "longlora": Case(make_config("longlora", r=4, alpha=8), archs=LLAMA, starts_equal=True, mergeable=True),
    # r = 4, 3 up-projections, 2 tasks; every B^i = 0 at init. The update is one matrix per task, merged
    # per task by merge_task (test_mtl_lora.py), so the generic single-W merge check does not apply
    "mtl-lora": Case(make_config("mtl-lora", r=4, alpha=8, n_up_projection=3, n_tasks=2), starts_equal=True),
    # sparse_rate 0.05: 51 of the 32 x 32 entries of S; Λ starts at Λ0 and S at 0, so W' = W up
    # to the float32 round trip through the basis
    "frod": Case(make_config("frod", sparse_rate=0.05), starts_equal=True, mergeable=True),
    # r = 4; W_up = 0, so the injection is a no-op and the logits start as the base model's (the loss adds
    # the shadow's own LM term); Llama only, not mergeable (the correction depends on the input)
    "shadow": Case(make_config("shadow", r=4), archs=LLAMA, starts_equal=True),
    # 10% of each q and v weight (102 of 1024 entries on 32 x 32); the sparse values start at 0
    "supertuning": Case(make_config("supertuning", sparsity=0.9), starts_equal=True, mergeable=True),
}
