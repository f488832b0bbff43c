"""Cases for wave 4, helper e: Tied-LoRA."""
from __future__ import annotations

from impl_cases import Case, make_config

CASES = {
    # r = 4, alpha = 8 (s = 2); one A, B for the whole model, u and v per attention block; B = 0 makes every
    # ΔW_l zero at init, so the start is the base model, and each ΔW_l = s Λ_v B Λ_u A merges into W0
    "tied-lora": Case(make_config("tied-lora", r=4, alpha=8), starts_equal=True, mergeable=True),
}
