"""Cases for wave 4, helper f: SoRA."""
from __future__ import annotations

from impl_cases import Case, make_config

CASES = {
    # r_max = 4; B = 0 makes ΔW = B diag(g) A = 0 at init. The loss test runs training_hooks' proximal step
    # on the gates after every Adam step, with η = 1e-2 equal to the learning rate (test_sora.py pins it)
    "sora": Case(make_config("sora", r_max=4, alpha=8, sparse_lambda=3e-2, eta=1e-2), starts_equal=True,
                 mergeable=True),
}
