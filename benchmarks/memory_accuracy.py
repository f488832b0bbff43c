"""Estimated vs measured peak training memory (peftkb.calculators.memory against real training steps).

For each (model config, method) pair this runs three training steps (AdamW, random tokens, labels = inputs)
in a child process and measures the peak:

    cuda   torch.cuda.max_memory_allocated() over the whole child (weights included), compared with the
           estimate's `allocated` (the estimate without framework overhead)
    cpu    peak RSS (getrusage ru_maxrss) minus the RSS after imports and one warm-up step, with glibc told
           to serve every block >= 64 KiB by mmap and return it on free (MALLOC_MMAP_THRESHOLD_), so that RSS
           follows live tensor bytes rather than malloc's cache; compared with the same `allocated` estimate

Methods: lora, ia3, prompt-tuning, prefix-tuning (peft), bitfit and full-fine-tuning (plain torch:
requires_grad on biases / on everything), and, when reference_impls/ is importable, sequential-adapter,
mam-adapter and qlora from there (their layouts may differ from the peft/AdapterHub layouts the estimator
models; the rows say which implementation ran; they run in fp32 only, as their adapter weights stay fp32 on a
bf16 base). BitFit runs on the same Llama shape with attention and MLP
biases switched on (a bias-free Llama has nothing to train). Results go to benchmarks/results/.

    python benchmarks/memory_accuracy.py                 # cuda if available, else cpu
    python benchmarks/memory_accuracy.py --device cpu --quick
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LLAMA_NAMES = dict(q="q_proj", k="k_proj", v="v_proj", o="o_proj", gate="gate_proj", up="up_proj", down="down_proj")

CONFIGS = {
    "tiny-llama": dict(model_type="llama", hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                       num_attention_heads=8, num_key_value_heads=4, vocab_size=2048, max_position_embeddings=2048),
    "small-llama-cpu": dict(model_type="llama", hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                            num_attention_heads=8, num_key_value_heads=4, vocab_size=32000,
                            max_position_embeddings=2048),
    "small-llama": dict(model_type="llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=8,
                        num_attention_heads=16, num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096),
}

# On CPU, glibc serves blocks >= 64 KiB with mmap and returns them on free, so the peak RSS follows the
# live tensor bytes instead of what malloc keeps cached.
CHILD_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}

# method -> (implementation, overrides passed to the estimator)
METHODS = {
    "lora": ("peft", {"r": 8, "alpha": 16, "dropout": 0.0}),
    "ia3": ("peft", {}),
    "prompt-tuning": ("peft", {"n_virtual_tokens": 20}),
    "prefix-tuning": ("peft", {"n_virtual_tokens": 20, "prefix_projection": False}),
    "bitfit": ("torch", {}),
    "full-fine-tuning": ("torch", {}),
    "sequential-adapter": ("reference", {}),
    "mam-adapter": ("reference", {}),
    "qlora": ("reference", {}),
}


# -- child: one measurement -----------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(spec: dict) -> dict:
    import resource
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    import transformers

    device, dtype = spec["device"], {"fp32": torch.float32, "bf16": torch.bfloat16}[spec["dtype"]]
    cfg = dict(spec["config"])
    if spec["method"] == "bitfit":
        cfg.update(attention_bias=True, mlp_bias=True)
    impl = METHODS[spec["method"]][0]
    if impl == "peft":
        import peft  # noqa: F401  (imported before the baseline: module code is not training memory)
    elif impl == "reference":
        from reference_impls import METHODS as REF

        REF[spec["method"]]  # loads the method's module
    if device == "cpu":
        _warm_up(torch, transformers, cfg)  # load kernels and thread pools before taking the baseline
    baseline_rss = _rss_bytes()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in cfg.items() if k != "model_type"})
    hf_cfg._attn_implementation = "sdpa"
    model = transformers.LlamaForCausalLM(hf_cfg).to(dtype=dtype, device=device)
    model = _apply(spec, model, torch)
    if spec.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, cfg["vocab_size"], (spec["batch"], spec["seq"]), device=device)
    start = time.perf_counter()
    for _ in range(3):
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del out
    seconds = (time.perf_counter() - start) / 3
    extra = {}
    if device == "cuda":
        torch.cuda.synchronize()
        measured = torch.cuda.max_memory_allocated()
    else:
        measured = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline_rss
    return {"measured": int(measured), "trainable_measured": int(trainable),
            "seconds_per_step": round(seconds, 3), **extra}


def _warm_up(torch, transformers, cfg: dict) -> None:
    """One small training step, so that lazily loaded code and per-thread buffers are not counted as peak."""
    import gc

    small = {**cfg, "num_hidden_layers": 1, "vocab_size": 128}
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in small.items() if k != "model_type"})
    model = transformers.LlamaForCausalLM(hf_cfg)
    ids = torch.randint(0, 128, (1, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    torch.optim.AdamW(model.parameters()).step()
    del model
    gc.collect()


def _apply(spec: dict, model, torch):
    method, impl = spec["method"], METHODS[spec["method"]][0]
    if impl == "peft":
        import peft

        if method == "lora":
            config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
        elif method == "ia3":
            config = peft.IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])
        elif method == "prompt-tuning":
            config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20)
        else:
            config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20, prefix_projection=False)
        return peft.get_peft_model(model, config)
    if impl == "torch":
        for name, p in model.named_parameters():
            p.requires_grad_(method == "full-fine-tuning" or name.endswith(".bias"))
        return model
    from reference_impls import METHODS as REF  # imported lazily: only when the reference rows run

    config_cls, apply = REF[method]
    kwargs = {"prefix_projection": False} if method == "mam-adapter" else {}
    return apply(model, config_cls(**kwargs))


# -- parent: estimates and the table --------------------------------------------------------------------
def estimate(spec: dict) -> dict:
    from peftkb.calculators.architecture import architecture_from_config
    from peftkb.calculators.memory import estimate_memory
    from peftkb.calculators.params import count_trainable
    from peftkb.loader import load_catalog
    from peftkb.query import find_method

    cfg = dict(spec["config"])
    if spec["method"] == "bitfit":
        cfg.update(attention_bias=True, mlp_bias=True)
    arch = architecture_from_config(cfg, name=spec["config_name"])
    method = find_method(load_catalog(), spec["method"])
    overrides = METHODS[spec["method"]][1]
    count = count_trainable(method, arch, overrides)
    est = estimate_memory(method, arch, count, batch=spec["batch"], seq=spec["seq"], dtype=spec["dtype"],
                          device=spec["device"], gradient_checkpointing=spec.get("gradient_checkpointing", False),
                          overrides=overrides)
    return {"estimate": est.allocated, "estimate_peak_with_overhead": est.peak, "trainable_estimated": count.trainable,
            "terms": {t.key: t.bytes for t in est.terms}}


def plan(device: str, quick: bool) -> list[dict]:
    specs = []
    if device == "cuda":
        grid = [("tiny-llama", "fp32", 4, 256), ("small-llama", "bf16", 4, 512), ("small-llama", "fp32", 2, 512)]
    else:
        grid = [("tiny-llama", "fp32", 4, 256), ("tiny-llama", "bf16", 4, 256)] + (
            [] if quick else [("small-llama-cpu", "fp32", 2, 256)])
    for config_name, dtype, batch, seq in grid:
        for method in METHODS:
            specs.append(dict(config_name=config_name, config=CONFIGS[config_name], method=method, dtype=dtype,
                              batch=batch, seq=seq, device=device))
    if device == "cuda":
        specs.append(dict(config_name="small-llama", config=CONFIGS["small-llama"], method="lora", dtype="bf16",
                          batch=4, seq=512, device=device, gradient_checkpointing=True))
    return specs


def run_child(spec: dict, timeout: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=CHILD_ENV)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine(device: str) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "processor": platform.processor(),
            "cpus": os.cpu_count()}
    try:
        import peft
        import torch
        import transformers

        info.update(torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__)
        if device == "cuda":
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--quick", action="store_true", help="only the tiny config")
    parser.add_argument("--methods", default="", help="comma-separated subset of: " + ", ".join(METHODS))
    parser.add_argument("--timeout", type=int, default=300, help="seconds per measurement")
    parser.add_argument("--out", default=None, help="results file (default benchmarks/results/memory_accuracy_<device>.json)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    device = args.device
    if device == "auto":
        try:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            device = "cpu"
    wanted = {m.strip() for m in args.methods.split(",") if m.strip()}
    rows = []
    header = f"{'config':16s} {'method':19s} {'impl':9s} {'dtype':5s} {'B':>2s} {'S':>4s} {'measured MiB':>12s} " \
             f"{'estimate MiB':>12s} {'error':>7s}  trainable (ours / model)"
    print(header)
    print("-" * len(header))
    for spec in plan(device, args.quick):
        if wanted and spec["method"] not in wanted:
            continue
        row = {k: v for k, v in spec.items() if k != "config"}
        row["impl"] = METHODS[spec["method"]][0]
        row.update(estimate(spec))
        if row["impl"] == "reference" and spec["dtype"] != "fp32":
            # the reference implementations create fp32 adapter weights and do not follow a bf16 base model
            row["error"] = "skipped: reference implementations run in fp32 only"
        else:
            row.update(run_child(spec, args.timeout))
        if "measured" in row:
            row["relative_error"] = round((row["estimate"] - row["measured"]) / row["measured"], 4)
            err = f"{row['relative_error']:+.1%}"
            measured = f"{row['measured'] / 2**20:12.1f}"
        else:
            err, measured = "n/a", f"{'skipped' if str(row.get('error', '')).startswith('skipped') else 'error':>12s}"
        label = spec["method"] + (" +ckpt" if spec.get("gradient_checkpointing") else "")
        print(f"{spec['config_name']:16s} {label:19s} {row['impl']:9s} {spec['dtype']:5s} {spec['batch']:2d} "
              f"{spec['seq']:4d} {measured} {row['estimate'] / 2**20:12.1f} {err:>7s}  "
              f"{row['trainable_estimated']:,} / {row.get('trainable_measured', 'n/a')}"
              + (f"   [{row['error']}]" if "error" in row else ""), flush=True)
        rows.append(row)
    errors = [abs(r["relative_error"]) for r in rows if "relative_error" in r]
    summary = {"rows": len(rows), "measured": len(errors),
               "median_abs_error": round(sorted(errors)[len(errors) // 2], 4) if errors else None,
               "max_abs_error": round(max(errors), 4) if errors else None}
    print(f"\n{summary['measured']} measured; median |error| {summary['median_abs_error']}, max {summary['max_abs_error']}")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"memory_accuracy_{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "memory_accuracy", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "device": device,
              "measure": "torch.cuda.max_memory_allocated" if device == "cuda"
              else "peak RSS minus RSS after imports and a warm-up step (MALLOC_MMAP_THRESHOLD_=65536)",
              "compared_with": "estimate.allocated (no framework overhead)", "machine": machine(device),
              "summary": summary, "rows": rows}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
