"""Training-step time and peak memory of our LoRA and (IA)³ against peft's, on the same Llama config.

    .venv/bin/python benchmarks/impl_vs_peft.py                 # CPU, and CUDA too when available
    .venv/bin/python benchmarks/impl_vs_peft.py --device cpu --steps 30 --json results.json

Both sides get the same model (same seed), the same targets, the same batch and Adam. Time: the median
step (forward, backward, optimizer step) over `--steps` timed steps after warm-up, with ours and peft's
steps interleaved so that load from other processes hits both alike. Memory: on CUDA the peak allocated
bytes of the training steps (max_memory_allocated after a reset); on CPU, where torch keeps no such
counter, the growth of the peak RSS (VmHWM, reset through /proc/self/clear_refs just before training)
over the RSS at that moment: gradients, optimizer state and activations, each variant in a fresh
subprocess. Targets: time ratio <= 1.05, memory ratio <= 1.00.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reference_impls import METHODS  # noqa: E402
from reference_impls._core import find_targets, synthetic_batch  # noqa: E402

# tiny but not trivial: 4 blocks of width 256 with grouped-query attention, ~6M parameters
LLAMA = dict(vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
             num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256)
BATCH, SEQ = 8, 128
METHOD_CONFIGS = {"lora": dict(r=8, alpha=16), "ia3": {}}


def base_model():
    import transformers

    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))


def build(method: str, impl: str, device: str):
    """The model with `method` applied by `impl` ("ours" or "peft"), on `device`."""
    model = base_model()
    config = METHODS[method][0](**METHOD_CONFIGS[method])
    if impl == "ours":
        model = METHODS[method][1](model, config)
    else:
        import peft

        names = [t.name for t in find_targets(model, config.target_modules)]
        if method == "lora":
            peft_config = peft.LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=0.0, target_modules=names)
        else:
            ff = [t.name for t in find_targets(model, config.feedforward_modules)]
            peft_config = peft.IA3Config(target_modules=names, feedforward_modules=ff)
        model = peft.get_peft_model(model, peft_config)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.Adam(params, lr=1e-3), sum(p.numel() for p in params)


def step(model, opt, batch, device: str) -> float:
    t0 = time.perf_counter()
    loss = model(**batch).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def time_pair(method: str, device: str, steps: int, warmup: int = 3) -> dict:
    """Median step time of ours and peft's, interleaved."""
    runs = {impl: build(method, impl, device) for impl in ("ours", "peft")}
    batch = synthetic_batch(runs["ours"][0], BATCH, SEQ, device=device)
    times: dict[str, list[float]] = {"ours": [], "peft": []}
    for i in range(warmup + steps):
        for impl, (model, opt, _) in runs.items():
            t = step(model, opt, batch, device)
            if i >= warmup:
                times[impl].append(t)
    return {impl: {"median_step_s": statistics.median(ts), "trainable": runs[impl][2]} for impl, ts in times.items()}


def memory(method: str, impl: str, device: str, steps: int = 3) -> int:
    """Peak bytes of training: CUDA allocator peak, or (CPU, fresh process) growth of the peak RSS."""
    if device == "cuda":
        model, opt, _ = build(method, impl, device)
        batch = synthetic_batch(model, BATCH, SEQ, device=device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(steps):
            step(model, opt, batch, device)
        return torch.cuda.max_memory_allocated()
    out = subprocess.run([sys.executable, __file__, "--memory-child", method, impl, str(steps)],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _memory_child(method: str, impl: str, steps: int) -> None:
    """Print the peak RSS growth of `steps` training steps, in bytes (Linux)."""
    torch.set_num_threads(1)
    model, opt, _ = build(method, impl, "cpu")
    batch = synthetic_batch(model, BATCH, SEQ)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = _status_kib("VmRSS")
    for _ in range(steps):
        step(model, opt, batch, "cpu")
    print((_status_kib("VmHWM") - before) * 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--memory-child", nargs=3, metavar=("METHOD", "IMPL", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        method, impl, steps = args.memory_child
        return _memory_child(method, impl, int(steps))

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    results = []
    print(f"Llama {LLAMA['num_hidden_layers']}x{LLAMA['hidden_size']} (GQA {LLAMA['num_attention_heads']}/"
          f"{LLAMA['num_key_value_heads']}), batch {BATCH}x{SEQ}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    header = f"{'device':6} {'method':6} {'trainable':>10} {'ours ms':>9} {'peft ms':>9} {'time x':>7} {'ours MB':>9} {'peft MB':>9} {'mem x':>6}"
    print(header)
    print("-" * len(header))
    for device in devices:
        for method in METHOD_CONFIGS:
            t = time_pair(method, device, args.steps)
            assert t["ours"]["trainable"] == t["peft"]["trainable"], t
            mem = {impl: memory(method, impl, device) for impl in ("ours", "peft")}
            row = {"device": device, "method": method, "trainable": t["ours"]["trainable"],
                   "ours_step_ms": 1000 * t["ours"]["median_step_s"], "peft_step_ms": 1000 * t["peft"]["median_step_s"],
                   "ours_peak_mb": mem["ours"] / 2**20, "peft_peak_mb": mem["peft"] / 2**20}
            row["time_ratio"] = row["ours_step_ms"] / row["peft_step_ms"]
            row["memory_ratio"] = mem["ours"] / mem["peft"] if mem["peft"] else float("nan")
            results.append(row)
            print(f"{device:6} {method:6} {row['trainable']:>10,} {row['ours_step_ms']:>9.1f} {row['peft_step_ms']:>9.1f} "
                  f"{row['time_ratio']:>6.2f}x {row['ours_peak_mb']:>9.1f} {row['peft_peak_mb']:>9.1f} "
                  f"{row['memory_ratio']:>5.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
