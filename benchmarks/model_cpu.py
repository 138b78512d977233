"""MedMamba-T on CPU: inference at 224 px and training at 64 px, reference scan vs the cpu backend.

    .venv/bin/python benchmarks/model_cpu.py

Everything else in the model is identical between the two rows: only the selective-scan backend changes.
"""
from __future__ import annotations

import argparse
import json

import torch

import medmamba
from timing import median_seconds


def infer(backend: str, batch: int, size: int, repeats: int) -> float:
    model = medmamba.create_model("medmamba_t", num_classes=2, scan_backend=backend).eval()
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        model(x[:1])  # warm-up (JIT load) not timed
        return batch / median_seconds(lambda: model(x), repeats, warmup=0)


def train(backend: str, batch: int, size: int, repeats: int) -> float:
    torch.manual_seed(0)
    model = medmamba.create_model("medmamba_t", num_classes=2, scan_backend=backend).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 2, (batch,))
    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    # the first step pays warm-up and optimizer-state allocation
    return batch / median_seconds(step, repeats, warmup=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    from scan_cpu import cpu_model  # noqa: E402 (benchmarks/ is the script's folder)
    print(f"CPU: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for task, fn, batch, size in (("inference", infer, 8, 224), ("training (AdamW step)", train, 32, 64)):
        ref = fn("reference", batch, size, repeats=1)
        fast = fn("cpu", batch, size, repeats=3)
        rows.append(dict(task=task, batch=batch, size=size, reference=ref, cpu=fast))
        print(f"MedMamba-T {task:<22} {size:>3} px batch {batch:>2}: reference {ref:7.2f} images/s | "
              f"cpu {fast:7.2f} images/s | x{fast / ref:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(cpu=cpu_model(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
