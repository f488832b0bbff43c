"""Cases for wave 3's first half (catalog ids a..lo that peft implements): DoRA, LoHa, HRA, ..."""
from __future__ import annotations

from impl_cases import Case, make_config

CASES = {
    # r = 4 on the 32-wide models; m starts at ||W0||_c and B at 0, so the model starts unchanged
    "dora": Case(make_config("dora", r=4, alpha=8), starts_equal=True, mergeable=True),
    # A2 = 0 at init, so ΔW = (B1 A1) ⊙ (B2 A2) = 0
    "loha": Case(make_config("loha", r=4, alpha=8), starts_equal=True, mergeable=True),
    # r = 4 (even): the reflection vectors come in identical pairs, so H = I at init
    "hra": Case(make_config("hra", r=4), starts_equal=True, mergeable=True),
}
