"""How long a trainable-parameter count takes: `peftkb params` (config only) vs building the model with peft.

    A  `python -m peftkb params lora --model llama-2-70b --format json`, a cold subprocess each time
    B  a cold subprocess that imports torch, transformers and peft, builds LlamaForCausalLM for the same
       config on the meta device (no weights are allocated), applies LoraConfig(r=8, q_proj/v_proj) and calls
       get_nb_trainable_parameters(); its own timing of build + apply, without the imports, is reported too

Both give the same count (checked). Prints the medians and the ratio B / A, and writes
benchmarks/results/params_speed.json.

    python benchmarks/params_speed.py [--repeat 5] [--model llama-2-70b]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PEFT_SCRIPT = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
t0 = time.perf_counter()
import torch, transformers, peft
t1 = time.perf_counter()
cfg = {k: v for k, v in json.load(open(sys.argv[1])).items() if not k.startswith("_") and k != "model_type"}
with torch.device("meta"):
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
trainable = model.get_nb_trainable_parameters()[0]
t2 = time.perf_counter()
print(json.dumps({"trainable": trainable, "imports_s": t1 - t0, "build_apply_s": t2 - t1}))
"""


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return elapsed, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--model", default="llama-2-70b", help="a Llama-family preset")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "params_speed.json"))
    args = parser.parse_args()
    preset = ROOT / "peftkb" / "presets" / f"{args.model}.json"

    cli = [sys.executable, "-m", "peftkb", "params", "lora", "--model", args.model, "--format", "json"]
    timed(cli)  # once untimed: writes the catalog cache, as any first run after an edit does
    cli_runs, ours = [], None
    for _ in range(args.repeat):
        elapsed, out = timed(cli)
        cli_runs.append(elapsed)
        ours = json.loads(out)["trainable"]

    peft_runs, inner = [], []
    for _ in range(args.repeat):
        elapsed, out = timed([sys.executable, "-c", PEFT_SCRIPT, str(preset)])
        data = json.loads(out.strip().splitlines()[-1])
        peft_runs.append(elapsed)
        inner.append(data["build_apply_s"])
        if data["trainable"] != ours:
            raise SystemExit(f"counts differ: peftkb {ours}, peft {data['trainable']}")

    a, b, b_inner = statistics.median(cli_runs), statistics.median(peft_runs), statistics.median(inner)
    print(f"model {args.model}, LoRA r=8 on q_proj,v_proj: {ours:,} trainable parameters (both agree)")
    print(f"A  peftkb params (cold subprocess)          median {a:7.3f} s  over {args.repeat} runs")
    print(f"B  torch + peft on meta (cold subprocess)   median {b:7.3f} s  (build + apply alone {b_inner:.3f} s)")
    print(f"ratio B / A = {b / a:.1f}x;  build + apply alone / A = {b_inner / a:.1f}x")
    result = {"benchmark": "params_speed", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "machine": {"platform": platform.platform(), "python": platform.python_version()},
              "model": args.model, "trainable": ours, "repeat": args.repeat,
              "peftkb_cli_s": cli_runs, "meta_peft_s": peft_runs, "meta_peft_build_apply_s": inner,
              "median_peftkb_cli_s": round(a, 4), "median_meta_peft_s": round(b, 4),
              "median_meta_peft_build_apply_s": round(b_inner, 4), "ratio": round(b / a, 2)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
