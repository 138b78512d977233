"""MedMamba-T against timm's ResNet-18 and ResNet-50 on this CPU, side by side in one process (issue 19).

    .venv/bin/python benchmarks/cpu_vs_cnn.py                 # all rows, 2 threads
    .venv/bin/python benchmarks/cpu_vs_cnn.py --rows train64  # one row
    .venv/bin/python benchmarks/cpu_vs_cnn.py --profile infer64  # where MedMamba-T's time goes (torch.profiler)
    .venv/bin/python benchmarks/cpu_vs_cnn.py --profile onnx     # and in onnxruntime (its own profiler)
    .venv/bin/python benchmarks/cpu_vs_cnn.py --profile onnx_fused  # the export with --fused-scan

Rows: inference at 224 px (batch 8), a training step at 64 px (batch 32, forward + backward + step),
inference at 64 px (batch 32); random weights, 3 input channels, 2 classes. Every model is built and
trained as `medmamba train` does with its defaults (the library's `build_model` and `build_optimizer`:
stochastic depth 0.1, AdamW 1e-3 without decay on norms, biases, A and D), so the training row is what
a user of the package pays per step. The models are timed
in turns (round-robin, each round every model once) so that a slow spell of a shared machine falls on all
of them alike, and each figure is the median over the rounds. Then:

* the ONNX row: MedMamba-T exported as `medmamba export` does, in both forms of the scan (plain ONNX
  operators, the default; one fused node per SS2D, `--fused-scan`), each with the 1e-4 agreement check
  against PyTorch on the way, run by onnxruntime on the same number of threads, in turns with PyTorch;
* the selective scan alone at MedMamba-T's 224 px stage-1 shape (8, 384, 3136, 16), forward + backward,
  against its compute floor: the vector operations the kernel must issue per (row, step, state), divided
  by the rate at which this CPU's sgemm (torch's matmul) retires multiply-adds, measured in the same run.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from timing import interleaved_medians

ROWS = {"infer224": ("224 px inference, batch 8", 224, 8, False),
        "train64": ("64 px training step, batch 32", 64, 32, True),
        "infer64": ("64 px inference, batch 32", 64, 32, False)}
MODELS = ("medmamba_t", "timm/resnet18", "timm/resnet50")


def config(name: str) -> dict:
    from medmamba.config import load_config
    return load_config(None, [f"model={name}", "scan_backend=cpu"])


def build(name: str) -> torch.nn.Module:
    from medmamba.evaluation.runs import build_model
    torch.manual_seed(0)
    cfg = config(name)
    return build_model(cfg, 2, 3, drop_path_rate=cfg["drop_path_rate"])


def step_fn(name: str, size: int, batch: int, train: bool):
    from medmamba.training.optim import build_optimizer
    model = build(name)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 2, (batch,))
    if train:
        model.train()
        opt = build_optimizer(model, config(name))

        def run():
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        model.eval()

        def run():
            with torch.inference_mode():
                model(x)
    return run


def race(rows, rounds: int) -> dict:
    """images/s per (row, model), medians of ``rounds`` interleaved rounds."""
    results = {}
    for key in rows:
        label, size, batch, train = ROWS[key]
        fns = {name: step_fn(name, size, batch, train) for name in MODELS}
        results[key] = {name: batch / t for name, t in interleaved_medians(fns, rounds, warmup=2).items()}
    return results


def onnx_row(size: int, batch: int, rounds: int) -> dict:
    """PyTorch, and onnxruntime on both exported forms of the scan (plain operators; fused nodes), in turns."""
    from medmamba.deploy.export import export_onnx, onnx_session
    model = build("medmamba_t").eval()
    x = torch.randn(batch, 3, size, size)
    feeds = {"image": x.numpy()}
    with tempfile.TemporaryDirectory() as tmp:
        fns, diffs = {"pytorch": lambda: model(x)}, {}
        for form, fused in (("chunked", False), ("fused", True)):
            path, check = export_onnx(model, Path(tmp) / f"{form}.onnx", size, tolerance=1e-4, fused_scan=fused)
            session = onnx_session(path, threads=torch.get_num_threads())
            fns[form] = lambda session=session: session.run(["logits"], feeds)
            diffs[form] = check.max_abs_diff
        with torch.inference_mode():
            seconds = interleaved_medians(fns, rounds)
    return {"max_abs_diff": diffs, **{k: batch / t for k, t in seconds.items()}}


# Vector operations per (row, step, state) element, counted from ops/scan_cpu.py's inner loops (an FMA,
# a multiply, an add, a min or max each count one; exp(dt A) is exp2(dt (A log2 e)): the dt*A product, 2
# clamps, 2 for the range reduction (round, subtract), 6 FMAs for the polynomial, 1 for the exponent bits
# and 1 to combine; it was 15 with exp's two-constant range reduction, before 904f185). Per-row work
# (softplus of Delta, dt*x, transposes) is amortised over the 16 states and left out.
EXP_OPS = 13
FORWARD_OPS = EXP_OPS + 2 + 1            # h = exp(dt A) h + (dt x) B: mul + FMA; y += C h: FMA
BACKWARD_OPS = (EXP_OPS + 2              # rebuild h and exp(dt A) of the segment
                + 2                      # adjoint: gh = dy C + carry (FMA); carry = gh exp(dt A) (mul)
                + 7)                     # dC += dy h, dB += gh dt x, gda = gh h' e (2), gb, ga, dA: FMAs


def fma_rate(n: int = 2048, rounds: int = 5) -> float:
    """float32 multiply-adds per second that this CPU sustains on torch's threads, as its sgemm reaches them
    (n x n matrices: n**3 multiply-adds): the attainable peak of the vector units, clock and SIMD width
    included, without having to know either."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return n ** 3 / min(times)


def scan_row(batch=8, dim=96, side=56, n_state=16, rounds: int = 3) -> dict:
    """SS2D's four-direction scan as MedMamba-T's 224 px stage 1 calls it: (8, 96, 56, 56), 4 x 96 = 384 rows
    of 3136 steps, 16 states, the inputs laid out channels last as SS2D makes them."""
    from medmamba.ops.scan_cpu import cross_selective_scan_cpu
    torch.manual_seed(0)
    k = 4

    def pixels(*shape, scale=1.0):  # (batch, H, W, *shape) in memory, returned as (batch, *shape, H, W)
        t = torch.randn(batch, side, side, *shape) * scale
        return t.permute(0, 3, 1, 2) if len(shape) == 1 else t.permute(0, 3, 4, 1, 2)
    x = pixels(dim).requires_grad_()
    delta = pixels(k, dim, scale=0.5).requires_grad_()
    B, C = pixels(k, n_state).requires_grad_(), pixels(k, n_state).requires_grad_()
    A = (-torch.rand(k * dim, n_state) * 4 - 0.5).requires_grad_()
    D, bias = torch.randn(k * dim, requires_grad=True), torch.randn(k * dim, requires_grad=True)
    dy = torch.randn(batch, dim, side, side)

    def run():
        y = cross_selective_scan_cpu(x, delta, A, B, C, D, delta_bias=bias, delta_softplus=True)
        y.backward(dy)
    seconds = interleaved_medians({"scan": run}, rounds)["scan"]
    elements = batch * k * dim * side * side * n_state
    rate = fma_rate()
    floor = elements * (FORWARD_OPS + BACKWARD_OPS) / rate
    return {"seconds": seconds, "floor": floor, "fma_per_s": rate, "elements": elements}


def profile(key: str, steps: int = 3, rows: int = 12):
    """torch.profiler's table of MedMamba-T's operators over ``steps`` steps of one row."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    _, size, batch, train = ROWS[key]
    run = step_fn("medmamba_t", size, batch, train)
    run()
    run()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def profile_onnx(fused: bool = False, size: int = 64, batch: int = 32, steps: int = 3, rows: int = 12):
    """onnxruntime's own profile of the exported MedMamba-T: time per operator type, summed over ``steps`` runs."""
    import collections
    import json

    from medmamba.deploy.export import export_onnx, onnx_session
    x = torch.randn(batch, 3, size, size).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = export_onnx(build("medmamba_t").eval(), Path(tmp) / "m.onnx", size, fused_scan=fused)
        session = onnx_session(path, threads=torch.get_num_threads(), profile=str(Path(tmp) / "ort"))
        session.run(["logits"], {"image": x})
        for _ in range(steps):
            session.run(["logits"], {"image": x})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
            count[e["args"]["op_name"]] += 1
    total = sum(per_op.values())
    print(f"onnxruntime, {steps + 1} runs of batch {batch} at {size} px: {total / 1e3:.0f} ms in operators")
    for op, us in per_op.most_common(rows):
        print(f"  {op:<20} {100 * us / total:5.1f}%  {us / 1e3:8.1f} ms  {count[op]:6d} calls")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--rows", nargs="+", default=[*ROWS, "onnx", "scan"], choices=[*ROWS, "onnx", "scan"])
    parser.add_argument("--profile", choices=[*ROWS, "onnx", "onnx_fused"],
                        help="instead of the table: MedMamba-T's operator profile (torch.profiler, or onnxruntime's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.profile:
        if args.profile.startswith("onnx"):
            return profile_onnx(fused=args.profile == "onnx_fused")
        return profile(args.profile)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; medians of {args.rounds} interleaved rounds")
    table = race([r for r in args.rows if r in ROWS], args.rounds)
    if table:
        print("\n| run | MedMamba-T (cpu scan) | ResNet-18 (timm) | ResNet-50 (timm) | MedMamba-T / ResNet-50 |")
        print("| --- | --- | --- | --- | --- |")
        for key, r in table.items():
            print(f"| {ROWS[key][0]} | {r['medmamba_t']:.1f} img/s | {r['timm/resnet18']:.1f} img/s | "
                  f"{r['timm/resnet50']:.1f} img/s | {r['medmamba_t'] / r['timm/resnet50']:.2f}x |")
    if "onnx" in args.rows:
        o = onnx_row(64, 32, args.rounds)
        print(f"\nONNX, 64 px batch 32: PyTorch (cpu scan) {o['pytorch']:.1f} img/s")
        for form, what in (("chunked", "plain operators (any runtime)"), ("fused", "fused scan nodes (--fused-scan)")):
            print(f"  onnxruntime, {what}: {o[form]:.1f} img/s: onnxruntime / PyTorch {o[form] / o['pytorch']:.2f}x "
                  f"(export check: max |difference| {o['max_abs_diff'][form]:.1e}, tolerance 1e-4)")
    if "scan" in args.rows:
        s = scan_row()
        ops = FORWARD_OPS + BACKWARD_OPS
        print(f"\nSS2D scan forward+backward at (8, 384, 3136, 16): {s['seconds'] * 1e3:.1f} ms. Floor: "
              f"{s['elements'] / 1e6:.0f}M (row, step, state) elements x {ops} vector-lane operations "
              f"({FORWARD_OPS} forward + {BACKWARD_OPS} backward) / {s['fma_per_s'] / 1e9:.1f} G multiply-adds/s "
              f"(sgemm, measured) = {s['floor'] * 1e3:.1f} ms; the kernel is {s['seconds'] / s['floor']:.2f}x its floor")


if __name__ == "__main__":
    main()
