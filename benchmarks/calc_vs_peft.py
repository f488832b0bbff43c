"""peftkb's calculators against Hugging Face peft's published runs (evidence/peft-metamathqa.yaml).

For every published run that maps to a catalog method: `peftkb params` (the method's formula with the
run's hyperparameters, on the Llama-3.2-3B preset) against peft's `num_trainable_params`, and
`peftkb memory` (batch 4, 768 tokens, bf16, AdamW, the suite's setting) against the measured peak
accelerator memory. Writes benchmarks/results/calc_vs_peft.json and prints the summary: exact counts,
median and worst absolute memory error, per method and overall. This measures accuracy, not speed.

    python benchmarks/calc_vs_peft.py [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peftkb import evidence  # noqa: E402
from peftkb.loader import load_catalog  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "calc_vs_peft.json"
MEMORY_GOAL = 0.15  # the worst relative memory error aimed at; runs beyond it are listed


#: Why a run still misses (count not exact, or memory off by more than 15%), as found by reading peft's tuner and
#: the run's adapter config; shown beside the run instead of being hidden. Keyed by experiment.
EXPLAINED: dict[str, str] = {}  # none at present: the OSF run (peft 0.19, bf16 adapter) is now modelled as it ran


def compare(root: Path = ROOT) -> dict:
    catalog = load_catalog(root)
    (source,) = [s for s in evidence.load_evidence(root, catalog) if s.id == "peft-metamathqa"]
    checks = evidence.check_calculators(source, catalog)
    return {"source": source.id, "provenance": source.provenance.model_dump(), "preset": evidence.CHECK_PRESET,
            "setting": "batch 4, 768 tokens, bf16 weights, AdamW, and each run's peft version and adapter dtype "
                       "(the suite's train_config and meta_info)",
            "summary": evidence.summarize_checks(checks),
            "runs": [{**c.to_dict(), "explanation": EXPLAINED.get(c.experiment)} for c in checks]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    result = compare()
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    overall = result["summary"]["overall"]
    print(f"{overall['runs']} runs: counts exact {overall['params_exact']}/{overall['runs']}; memory error "
          f"median {overall['memory_median_abs_error']:.1%}, worst {overall['memory_worst_abs_error']:.1%}")
    for run in result["runs"]:
        if not run["params_exact"]:
            print(f"  count differs: {run['experiment']}: peft {run['measured_params']:,}, peftkb "
                  f"{run['counted_params'] if run['counted_params'] is None else format(run['counted_params'], ',')}"
                  + (f" ({run['error']})" if run["error"] else "")
                  + (f"\n    why: {run['explanation']}" if run["explanation"] else ""))
        elif run["memory_error"] is not None and abs(run["memory_error"]) > MEMORY_GOAL:
            print(f"  memory off by {run['memory_error']:+.1%}: {run['experiment']}"
                  + (f"\n    why: {run['explanation']}" if run["explanation"] else " (not yet explained)"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
