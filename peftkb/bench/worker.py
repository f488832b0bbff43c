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


def _tokenize(tokenizer: Any, texts: list[str], seq_len: int) -> list[list[int]]:
    """Token ids of every text, once (truncated, unpadded): batches are padded as they are drawn."""
    return tokenizer(texts, max_length=seq_len, truncation=True)["input_ids"]


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one method on one model, with early stopping on the validation split when it has one.

    Without a validation split (`val_share` 0): `epochs` passes over the training set (or `max_steps`), then
    the test set. With one: the validation accuracy is measured every `eval_every` steps; training stops
    after `patience` measurements without improvement ("converged") or at the step cap `max_steps`
    ("cap": not converged), and the reported test accuracy is the one at the best validation measurement
    (the test set is evaluated only when the validation accuracy improves).
    """
    import torch
    import transformers

    import reference_impls
    from peftkb.bench import data, models

    torch.manual_seed(spec["seed"])
    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    device = torch.device(spec["device"])
    if device.type == "cuda":  # fp32 weights, TF32 matrix products: the precision this profile records
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    texts, labels, names = data.load_bbc_news()
    split = data.split(texts, labels, names, seed=spec["seed"], train_per_class=spec.get("train_per_class"),
                       test_per_class=spec.get("test_per_class"), val_share=spec.get("val_share", 0.0),
                       val_per_class=spec.get("val_per_class"))
    model, tokenizer = models.load_classifier(spec["model"], len(names), spec["seed"])
    base_params = sum(p.numel() for p in model.parameters())
    head_params = sum(p.numel() for n, p in model.named_parameters() if models.is_head(n))

    config_cls, apply = reference_impls.METHODS[spec["method"]]
    config = config_cls(**spec.get("config", {}))
    model = apply(model, config)
    for name, param in model.named_parameters():  # every method trains the task head, as in the survey
        if models.is_head(name):
            param.requires_grad_(True)
    model.to(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    extra = reference_impls.hooks(spec["method"], model, config)

    ids = {name: _tokenize(tokenizer, xs, spec["seq_len"]) for name, xs in
           (("train", split.train_texts), ("val", split.val_texts), ("test", split.test_texts))}
    ys = {"train": split.train_labels, "val": split.val_labels, "test": split.test_labels}

    def batch(part: str, rows: list[int]) -> tuple[dict[str, Any], Any]:
        enc = tokenizer.pad({"input_ids": [ids[part][i] for i in rows]}, return_tensors="pt")
        return ({k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")},
                torch.tensor([ys[part][i] for i in rows], device=device))

    def accuracy(part: str) -> float:
        model.eval()
        correct, size = 0, spec["batch_size"] * 2
        with torch.no_grad():
            for i in range(0, len(ids[part]), size):
                inputs, y = batch(part, list(range(i, min(i + size, len(ids[part])))))
                correct += (model(**inputs).logits.argmax(-1) == y).sum().item()
        model.train()
        return correct / len(ids[part])

    head = [p for n, p in model.named_parameters() if p.requires_grad and models.is_head(n)]
    body = [p for n, p in model.named_parameters() if p.requires_grad and not models.is_head(n)]
    groups = [{"params": body, "lr": spec["lr"]}] if body else []
    groups.append({"params": head, "lr": max(spec["lr"], spec.get("head_lr", 1e-3))})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _rss_bytes()
    n_train, size = len(ids["train"]), spec["batch_size"]
    steps_per_epoch = -(-n_train // size)
    early_stopping = bool(ids["val"])
    total = spec["max_steps"] if early_stopping and spec.get("max_steps") else steps_per_epoch * spec["epochs"]
    if not early_stopping and spec.get("max_steps"):
        total = min(total, spec["max_steps"])
    eval_every, patience = spec.get("eval_every") or steps_per_epoch, spec.get("patience") or 3
    shuffler = torch.Generator().manual_seed(spec["seed"])
    step, step_times, first_loss, last_loss = 0, [], None, None
    best = {"val": -1.0, "test": None, "step": 0}
    curve: list[tuple[int, float]] = []
    stopped = "cap"
    model.train()
    start = time.perf_counter()
    while step < total and stopped == "cap":
        order = torch.randperm(n_train, generator=shuffler).tolist()  # a fresh order each epoch
        for i in range(0, n_train, size):
            inputs, y = batch("train", order[i:i + size])
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
            if early_stopping and (step % eval_every == 0 or step == total):
                val = accuracy("val")
                curve.append((step, round(val, 4)))
                if val > best["val"]:
                    best = {"val": val, "test": accuracy("test"), "step": step}
                elif len(curve) - 1 - [s for s, _ in curve].index(best["step"]) >= patience:
                    stopped = "patience"
            if step >= total or stopped != "cap":
                break
    train_seconds = time.perf_counter() - start
    test_accuracy = best["test"] if early_stopping else accuracy("test")
    if device.type == "cuda":
        peak, peak_kind = torch.cuda.max_memory_allocated(device), "cuda_max_memory_allocated"
    else:
        peak, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu_peak_rss"
    timed = step_times[1:] or step_times  # the first step pays one-off allocation costs
    result = {
        "status": "ok",
        "trainable_params": trainable, "method_params": trainable - head_params, "head_params": head_params,
        "base_params": base_params, "trainable_pct": round(100 * trainable / base_params, 4),
        "accuracy": test_accuracy, "n_train": n_train, "n_val": len(ids["val"]), "n_test": len(ids["test"]),
        "steps": step, "loss_first": first_loss, "loss_last": last_loss,
        "time_per_step_s": sum(timed) / len(timed), "train_seconds": train_seconds,
        "peak_memory_bytes": peak, "peak_memory_kind": peak_kind,
        "training_memory_bytes": peak - rss_before if peak_kind == "cpu_peak_rss" else peak,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "precision": "fp32, TF32 matrix products" if device.type == "cuda" else "fp32",
    }
    if early_stopping:
        result.update({"val_accuracy": best["val"], "best_step": best["step"], "stopped": stopped,
                       "converged": stopped == "patience", "val_curve": curve})
    return result


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
