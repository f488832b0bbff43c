"""One benchmark run, in its own process: `python -m peftkb.bench.worker SPEC_JSON`.

A fresh process per run makes peak memory a per-run measurement (CPU: the process's peak RSS; CUDA:
`torch.cuda.max_memory_allocated`) and keeps a crash from taking the other runs with it. Progress goes
to stderr as `PROGRESS {json}` lines; the result is one JSON object on stdout.
"""
from __future__ import annotations

import json
import platform
import resource
import sys
import time
import traceback
from typing import Any


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def _progress(**event: Any) -> None:
    sys.stderr.write("PROGRESS " + json.dumps(event) + "\n")
    sys.stderr.flush()


def run(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    import transformers

    import reference_impls
    from peftkb.bench import data, models

    torch.manual_seed(spec["seed"])
    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    device = torch.device(spec["device"])
    texts, labels, names = data.load_bbc_news()
    split = data.split(texts, labels, names, seed=spec["seed"], train_per_class=spec.get("train_per_class"),
                       test_per_class=spec.get("test_per_class"))
    model, tokenizer = models.load_classifier(spec["model"], len(names), spec["seed"])
    base_params = sum(p.numel() for p in model.parameters())
    head_params = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in models.HEAD_NAMES)

    config_cls, apply = reference_impls.METHODS[spec["method"]]
    config = config_cls(**spec.get("config", {}))
    model = apply(model, config)
    for name, param in model.named_parameters():  # every method trains the task head, as in the survey
        if name.split(".")[0] in models.HEAD_NAMES:
            param.requires_grad_(True)
    model.to(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    extra = reference_impls.hooks(spec["method"], model, config)

    def batches(xs: list[str], ys: list[int], size: int):
        for i in range(0, len(xs), size):
            enc = tokenizer(xs[i:i + size], max_length=spec["seq_len"], truncation=True, padding=True,
                            return_tensors="pt")
            yield {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}, \
                torch.tensor(ys[i:i + size], device=device)

    head = [p for n, p in model.named_parameters() if p.requires_grad and n.split(".")[0] in models.HEAD_NAMES]
    body = [p for n, p in model.named_parameters() if p.requires_grad and n.split(".")[0] not in models.HEAD_NAMES]
    groups = [{"params": body, "lr": spec["lr"]}] if body else []
    groups.append({"params": head, "lr": max(spec["lr"], spec.get("head_lr", 1e-3))})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _rss_bytes()
    steps_per_epoch = -(-len(split.train_texts) // spec["batch_size"])
    total = steps_per_epoch * spec["epochs"]
    if spec.get("max_steps"):
        total = min(total, spec["max_steps"])
    step, step_times, first_loss, last_loss = 0, [], None, None
    model.train()
    start = time.perf_counter()
    while step < total:
        for inputs, y in batches(split.train_texts, split.train_labels, spec["batch_size"]):
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(**inputs).logits, y)
            optimizer.zero_grad(set_to_none=True)
            (loss + extra["extra_loss"]() if "extra_loss" in extra else loss).backward()
            optimizer.step()
            if "after_step" in extra:
                extra["after_step"](step)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_times.append(time.perf_counter() - t0)
            first_loss = loss.item() if first_loss is None else first_loss
            last_loss = loss.item()
            step += 1
            _progress(step=step, total=total, loss=round(last_loss, 4))
            if step >= total:
                break
    train_seconds = time.perf_counter() - start
    model.eval()
    correct = 0
    with torch.no_grad():
        for inputs, y in batches(split.test_texts, split.test_labels, spec["batch_size"] * 2):
            correct += (model(**inputs).logits.argmax(-1) == y).sum().item()
    if device.type == "cuda":
        peak, peak_kind = torch.cuda.max_memory_allocated(device), "cuda_max_memory_allocated"
    else:
        peak, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu_peak_rss"
    timed = step_times[1:] or step_times  # the first step pays one-off allocation costs
    return {
        "status": "ok",
        "trainable_params": trainable, "method_params": trainable - head_params, "head_params": head_params,
        "base_params": base_params, "trainable_pct": round(100 * trainable / base_params, 4),
        "accuracy": correct / len(split.test_texts), "n_train": len(split.train_texts), "n_test": len(split.test_texts),
        "steps": step, "loss_first": first_loss, "loss_last": last_loss,
        "time_per_step_s": sum(timed) / len(timed), "train_seconds": train_seconds,
        "peak_memory_bytes": peak, "peak_memory_kind": peak_kind,
        "training_memory_bytes": peak - rss_before if peak_kind == "cpu_peak_rss" else peak,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
    }


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        result = run(spec)
    except Exception as exc:  # recorded as a failed run; the runner goes on with the others
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc(limit=6)}
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
