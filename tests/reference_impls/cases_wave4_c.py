"""Cases for wave 4, helper c: the AdapterHub adapters (Pfeiffer, Compacter++, the MAD-X invertible adapter) and
the ReFT family (LoReFT, NoReFT, DiReFT)."""
from __future__ import annotations

from impl_cases import Case, make_config

# two prefix and two suffix positions of the 12-long synthetic sequences, so both units of a layer train
REFT = dict(r=2, prefix_positions=2, suffix_positions=2)

CASES = {
    # bottleneck 32 // 4 = 8; W_up = 0 at init, so every block starts unchanged
    "pfeiffer-adapter": Case(make_config("pfeiffer-adapter", reduction_factor=4), starts_equal=True),
    # bottleneck 8, n = 4 divides 32 and 8; the up-projection's fast factors start at zero
    "compacter-plus-plus": Case(make_config("compacter-plus-plus", reduction_factor=4, phm_dim=4), starts_equal=True),
    # the last layers of F and G start at zero, so the coupling starts as the identity
    "invertible-adapter": Case(make_config("invertible-adapter", reduction_factor=4), starts_equal=True),
    # W h + b ≠ R h at init (both libraries initialise W, b as nn.Linear), so no ReFT starts at the base model
    "loreft": Case(make_config("loreft", **REFT)),
    "noreft": Case(make_config("noreft", **REFT)),
    "direft": Case(make_config("direft", **REFT)),
}
