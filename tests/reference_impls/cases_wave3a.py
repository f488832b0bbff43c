"""Cases for wave 3's first half (catalog ids a..lo that peft implements): DoRA, ..."""
from __future__ import annotations

from impl_cases import Case, make_config

CASES = {
    # r = 4 on the 32-wide models; m starts at ||W0||_c and B at 0, so the model starts unchanged
    "dora": Case(make_config("dora", r=4, alpha=8), starts_equal=True, mergeable=True),
}
