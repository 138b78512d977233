"""Command line: a thin layer over the library API (``python -m medmamba`` or ``medmamba``)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ._version import package_version
from .data.medmnist import DATA_ENV


def _info(args) -> int:
    import torch

    import medmamba
    print(f"medmamba {medmamba.__version__}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print("models:", ", ".join(medmamba.list_models()))
    print("selective-scan backends available:", ", ".join(medmamba.ops.available_backends()))
    print("auto backend on cpu:", medmamba.ops.resolve_backend("auto", torch.device("cpu")).name)
    return 0


def _doctor(args) -> int:
    from .ops.doctor import diagnose, doctor_text
    result = diagnose(args.backend, args.device, args.seconds)
    print(doctor_text(result))
    return 0 if result["ok"] else 1


def _demo(args) -> int:
    """Forward pass of MedMamba on real MedMNIST images: shapes, backend and throughput."""
    import torch

    import medmamba
    from .data import MedMNIST, build_transform
    from .data.medmnist import data_root
    data = MedMNIST(args.dataset, "test", data_root(args.data_root))
    data.transform = build_transform(args.img_size, data.info.n_channels, train=False)
    n = min(args.batch_size, len(data))
    x = torch.stack([data[i][0] for i in range(n)])
    model = medmamba.create_model(args.model, num_classes=data.info.num_classes, in_chans=data.info.n_channels,
                                  scan_backend=args.backend).eval()
    backend = medmamba.ops.resolve_backend(args.backend, x.device).name
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {n_params / 1e6:.2f} M parameters, scan backend '{backend}', "
          f"{torch.get_num_threads()} threads")
    print(f"{n} {args.dataset} test images, {tuple(data.images.shape[1:])} -> {tuple(x.shape[1:])}")
    with torch.no_grad():
        model(x[:1])  # JIT warm-up, not timed
        start = time.perf_counter()
        logits = model(x)
        elapsed = time.perf_counter() - start
        stages = model.forward_stages(x[:1], out_indices=range(model.num_layers))[1]
    print("stage feature maps:", ", ".join(str(tuple(m.shape[1:])) for m in stages))
    probs = logits.softmax(-1)
    print(f"logits {tuple(logits.shape)}, finite: {bool(torch.isfinite(logits).all())}; "
          f"{n / elapsed:.1f} images/s")
    print("untrained model (random weights): class-1 probability of the first images:",
          " ".join(f"{p:.3f}" for p in probs[:8, 1].tolist()), "| labels:", data.labels[:8].tolist())
    return 0


def _config(args) -> int:
    from .config import describe_config, load_config
    print(describe_config(load_config(args.config, args.overrides)))
    return 0


def _data(args) -> int:
    from .config import load_config
    from .data.builder import build_data
    from .data.look import look_at, look_text
    overrides = list(args.overrides) + ([f"data.root={args.data_root}"] if args.data_root else [])
    look = look_at(build_data(load_config(args.config, overrides), augment=False), progress=True)
    print(look_text(look))
    return 0


def _train(args) -> int:
    from .config import load_config
    from .evaluation.reports import PUBLISHED, published_table, summary_text
    from .training.trainer import train
    overrides = list(args.overrides)
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.resume:
        result = train(output=args.output, overrides=overrides, resume=True)
    else:
        cfg = load_config(args.config, overrides)
        result = train(cfg, output=args.output, overwrite=args.overwrite)
    trainer, test = result["trainer"], result.get("test")
    from . import distributed as dist_utils
    if test is not None and dist_utils.is_main():
        name = trainer.data.name
        print(f"\nTest split of {name}, best checkpoint (epoch {trainer.state.best_epoch}, "
              f"{trainer.state.best_weights} weights, val {trainer.cfg['monitor']} {trainer.state.best:.4f}):\n")
        print(summary_text(result["assessment"]))
        if name in PUBLISHED:
            print("\nBeside the published results (MedMNIST's ACC/AUC rules):\n")
            print(published_table(name, test, f"{trainer.cfg['model']} (this run)"))
        print(f"\nreport: {result['report']['md']}")
    dist_utils.cleanup()
    return 0


def _pretrain(args) -> int:
    from .artifacts.run_dir import RunDir
    from .config import load_config
    from .training.pretrain import pretrain
    overrides = list(args.overrides) + ([f"data.root={args.data_root}"] if args.data_root else [])
    cfg = load_config(RunDir(args.output).config if args.resume else args.config, overrides, family_defaults=False)
    pretrain(cfg, args.output, resume=args.resume, overwrite=args.overwrite)
    return 0


def _runs_and_overrides(items):
    """One positional list: runs, then config overrides (key=value) for the data, e.g. data.root=... tta=true."""
    runs = [Path(r) for r in items if "=" not in r or Path(r).exists()]
    return runs, [r for r in items if "=" in r and not Path(r).exists()]


def _cv(args) -> int:
    from .config import load_config
    from .training.cv import cross_validate, cv_table
    overrides = list(args.overrides) + ([f"data.root={args.data_root}"] if args.data_root else [])
    result = cross_validate(load_config(args.config, overrides), args.output, overwrite=args.overwrite)
    print("\n" + cv_table(result))
    print(f"\nreport: {Path(args.output) / 'cv.md'}")
    return 0


def _evaluate(args) -> int:
    from .evaluation.evaluate import evaluate
    from .evaluation.reports import summary_text
    runs, overrides = _runs_and_overrides(args.run)
    overrides += [f"data.root={args.data_root}"] if args.data_root else []
    result = evaluate(runs, args.split, args.checkpoint, args.output, overrides, sensitivity=args.sensitivity,
                      positive_class=args.positive_class, n_resamples=args.bootstrap, seed=args.seed,
                      overwrite=args.overwrite, progress=True, coverage=args.coverage, conformal=args.conformal,
                      ood=args.ood)
    print(summary_text(result.report))
    print(f"\nreport: {result.paths['md']}")
    return 0


def _compare(args) -> int:
    import numpy as np

    from .files import refuse_existing
    from .errors import MedMambaError
    from .evaluation.reports import compare_outputs, comparison_text
    from .evaluation.runs import run_outputs
    a, b = ([Path(p) for p in group.split(",") if p] for group in (args.a, args.b))
    out = Path(args.output) if args.output else None
    if out is not None:
        refuse_existing(out, overwrite=args.overwrite, alternative="choose another --output")
    overrides = [f"data.root={args.data_root}"] if args.data_root else []
    first, second = (run_outputs(runs, args.split, overrides=overrides, progress=True) for runs in (a, b))
    if not np.array_equal(first.labels, second.labels) or list(first.data.classes) != list(second.data.classes):
        raise MedMambaError(f"{args.a} and {args.b} were not evaluated on the same {args.split} images and classes")
    result = compare_outputs(first, second, names=(args.a, args.b), n_resamples=args.bootstrap, seed=args.seed)
    print(comparison_text(result))
    if out is not None:
        from .evaluation.reports import write_comparison
        print(f"\nreport: {write_comparison(out, result)['md']}")
    return 0


def _predictor(args):
    from .errors import MedMambaError
    from .deploy.inference import Predictor
    if args.device and args.device.startswith("cuda") and not torch_cuda():
        raise MedMambaError(f"--device {args.device}: no CUDA GPU is available to torch here")
    return Predictor.from_checkpoint(args.checkpoint, scan_backend=args.backend, device=args.device)


def _predict(args) -> int:
    import torch

    from .files import refuse_existing
    from .ops import resolve_backend
    out = Path(args.output)
    refuse_existing(out, overwrite=args.overwrite)
    predictor = _predictor(args)
    result = predictor.predict_files(args.inputs, batch_size=args.batch_size, workers=args.workers, progress=True)
    result.write_csv(out)
    for path, reason in result.failures:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    backend = resolve_backend(args.backend, predictor.device).name
    print(f"wrote {out}: {len(result.paths)} images predicted, {len(result.failures)} skipped; "
          f"{result.images_per_second:.1f} images/s (reading + preprocessing + model, JIT warm-up excluded; "
          f"{predictor.device}, scan backend {backend}, {torch.get_num_threads()} threads)")
    return 1 if result.failures else 0


def _explain(args) -> int:
    from .deploy.explain import explain_files
    predictor = _predictor(args)
    result = explain_files(predictor, args.inputs, args.output, target=args.target, stage=args.stage,
                           method=args.method, overwrite=args.overwrite, progress=True)
    for path, reason in result.failures:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(f"wrote {len(result.rows)} {args.method} overlays (stage {result.stage}) and "
          f"{Path(args.output) / 'maps.csv'}; {len(result.failures)} skipped")
    return 1 if result.failures else 0


def _export(args) -> int:
    import torch

    from .artifacts.checkpoint import save_pretrained
    from .errors import MedMambaError
    from .data.folders import require_inputs
    if args.fused_scan and args.format != "onnx":
        raise MedMambaError("--fused-scan applies to --format onnx only")
    predictor = _predictor(args)
    card = predictor.card
    if args.format == "hub":
        return _export_hub(args, predictor)
    if args.format == "safetensors":
        weights, config_path = save_pretrained(predictor.model, card, args.output, overwrite=args.overwrite)
        print(f"wrote {weights} and {config_path}; load with "
              f"medmamba.create_model({card.model!r}, pretrained={str(weights)!r})")
        return 0
    from .deploy.export import export_onnx
    images = None
    if args.check_images:
        paths, _ = require_inputs(args.check_images, "check with")
        images = torch.stack([predictor.read(p)[1] for p in paths[:16]])
    img_size = args.img_size or predictor.img_size
    metadata = {**card.to_dict(), "img_size": img_size}
    print(f"exporting {card.model} at {img_size}x{img_size} px to ONNX (opset {args.opset}); "
          "this takes a minute or more", flush=True)
    path, check = export_onnx(predictor.model, args.output, img_size, opset=args.opset, overwrite=args.overwrite,
                              check_images=images, metadata=metadata,
                              in_chans=predictor.channels, fused_scan=args.fused_scan)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): input 'image' (batch, {predictor.channels}, "
          f"{img_size}, {img_size}), output 'logits'; dynamic batch")
    print(f"onnxruntime vs PyTorch: max abs difference {check.max_abs_diff:.3g} on {check.inputs} "
          f"(batches {', '.join(map(str, check.batches))})")
    if args.fused_scan:
        print("its scans are fused nodes: open it with medmamba.deploy.export.onnx_session(path) where medmamba and "
              "onnxruntime-extensions are installed (other ONNX runtimes cannot run it)")
    return 0


def _export_hub(args, predictor) -> int:
    """A folder to share: weights, model card, timm's config.json and a README with the run's test results."""
    from .files import refuse_existing
    from .errors import MedMambaError
    from .evaluation.evaluate import run_report
    from .evaluation.reports import summary_text
    if not hasattr(predictor.model, "save_pretrained"):
        raise MedMambaError(f"--format hub: {predictor.card.model} is a timm model; share it with timm's own "
                            f"timm.models.push_to_hf_hub, or export it as safetensors")
    out = Path(args.output)
    refuse_existing(out, overwrite=args.overwrite)
    report = run_report(args.checkpoint)
    results = f"{report['title']}\n\n{summary_text(report)}" if report else None
    predictor.model.save_pretrained(out, model_card_kwargs={"results": results})
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}"
          + ("" if report else " (no test report beside this checkpoint: the README has no results)"))
    print(f"load with MedMamba.from_pretrained({str(out)!r}); share with model.push_to_hub(\"org/name\")")
    return 0


def _serve(args) -> int:
    from .errors import MedMambaError
    from .deploy.serve import serve
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"serving on {args.host}: reachable from other machines; the page has no login", file=sys.stderr)
    if not 0 < args.port < 65536:
        raise MedMambaError(f"--port {args.port}: a port is 1..65535")
    serve(args.checkpoints, host=args.host, port=args.port, max_file_mb=args.max_file_mb, queue_size=args.queue,
          device=args.device)
    return 0


def torch_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def add_run_options(p, output_help: str, output_required: bool = True, config: bool = False,
                    bootstrap: int | None = None):
    """The options that commands working on runs share: output folder and --overwrite, MedMNIST data root,
    optionally a config file with key=value overrides, and the bootstrap's resamples and seed."""
    if config:
        p.add_argument("--config", help="YAML config (defaults and every key: `medmamba config`)")
    p.add_argument("--output", required=output_required, help=output_help)
    p.add_argument("--overwrite", action="store_true", help="replace what --output holds")
    p.add_argument("--data-root", help=f"MedMNIST data root (default: ${DATA_ENV})")
    if bootstrap is not None:
        p.add_argument("--bootstrap", type=int, default=bootstrap, help="resamples for the 95%% intervals (0: none)")
        p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    if config:
        p.add_argument("overrides", nargs="*", help="config overrides, e.g. optimizer.lr=3e-4 epochs=10")


def add_model_options(p, output_help: str):
    """The options of commands that run one trained model on image files."""
    p.add_argument("checkpoint", help="weights with model.json beside them, a checkpoint folder, or a training run")
    p.add_argument("--backend", default="auto", help="selective-scan backend (see `medmamba info`)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--output", required=True, help=output_help)
    p.add_argument("--overwrite", action="store_true", help="replace what --output names")


def build_parser() -> argparse.ArgumentParser:
    from .config import default
    parser = argparse.ArgumentParser(prog="medmamba", description=__doc__)
    parser.add_argument("--version", action="version", version=f"medmamba {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, models and selective-scan backends").set_defaults(func=_info)
    doc = sub.add_parser("doctor", help="versions, device, CPU features, each scan backend checked and timed; "
                         "exit 1 when the backend you would use is broken")
    doc.add_argument("--backend", default="auto", help="the backend you configure (default: auto's choice)")
    doc.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    doc.add_argument("--seconds", type=float, default=2.0, help="timing per backend")
    doc.set_defaults(func=_doctor)
    conf = sub.add_parser("config", help="print the resolved training configuration, a comment per key")
    conf.add_argument("--config", help="YAML config (defaults: medmamba.config.SCHEMA)")
    conf.add_argument("overrides", nargs="*", help="config overrides, e.g. optimizer.lr=3e-4 epochs=10")
    conf.set_defaults(func=_config)
    demo = sub.add_parser("demo", help="forward pass of MedMamba on real MedMNIST test images")
    demo.add_argument("--data-root", help=f"folder holding the MedMNIST .npz files (default: ${DATA_ENV})")
    demo.add_argument("--dataset", default=default("data.medmnist"))
    demo.add_argument("--model", default=default("model"))
    demo.add_argument("--img-size", type=int, default=default("data.img_size"))
    demo.add_argument("--batch-size", type=int, default=8)
    demo.add_argument("--backend", default="auto", help="selective-scan backend (see `medmamba info`)")
    demo.set_defaults(func=_demo)

    data = sub.add_parser("data", help="a look at the data a configuration names: images per split and class, "
                          "sizes, intensity range, duplicates across splits, unreadable files")
    data.add_argument("--config", help="YAML config (the data keys: `medmamba config`)")
    data.add_argument("--data-root", help=f"MedMNIST data root (default: ${DATA_ENV})")
    data.add_argument("overrides", nargs="*", help="config overrides, e.g. data.folder=scans/ data.normalize=image")
    data.set_defaults(func=_data)

    train = sub.add_parser("train", help="train (and test) MedMamba; torchrun-compatible")
    add_run_options(train, "output folder (never overwritten unless --overwrite)", config=True)
    train.add_argument("--resume", action="store_true", help="continue the run in --output exactly")
    train.set_defaults(func=_train)

    pre = sub.add_parser("pretrain", help="self-supervised pretraining (SimMIM) on unlabeled images: data.folder=DIR "
                         "(any depth) or a dataset's train split; the output is what pretrained=RUN takes")
    add_run_options(pre, "output folder (never overwritten unless --overwrite)", config=True)
    pre.add_argument("--resume", action="store_true", help="continue the pretraining in --output")
    pre.set_defaults(func=_pretrain)

    cv = sub.add_parser("cv", help="k-fold cross-validation over train+val (data.folds=K): mean +- sd per metric")
    add_run_options(cv, "folder for fold0..fold<K-1>, cv.md and cv.json", config=True)
    cv.set_defaults(func=_cv)

    ev = sub.add_parser("evaluate", help="metrics, report and plots of a trained run (or an ensemble) on a split")
    ev.add_argument("run", nargs="+", metavar="RUN",
                    help="training output folder(s), several: their probabilities averaged; then config "
                         "overrides applied to every run, e.g. data.root=... tta=true")
    ev.add_argument("--checkpoint", default="best", help="best, last, or a weights file (one run)")
    ev.add_argument("--split", default="test", choices=["train", "val", "test"])
    add_run_options(ev, "report folder (default: RUN/eval_<split>_<checkpoint>)", output_required=False,
                    bootstrap=1000)
    ev.add_argument("--sensitivity", type=float, help="binary tasks: report the operating point whose threshold, "
                    "chosen on the validation split, reaches this sensitivity (e.g. 0.9)")
    ev.add_argument("--positive-class", help="binary tasks: the positive class (name or index; default: 1): "
                    "its sensitivity, specificity, precision and F1 are reported, and --sensitivity is about it")
    ev.add_argument("--coverage", type=float, help="prediction sets calibrated now on the validation split for this "
                    "coverage (e.g. 0.9; default: the run's own, from its model card)")
    ev.add_argument("--conformal", choices=["aps", "lac", "raps"], default="aps",
                    help="the prediction sets' score with --coverage (default aps)")
    ev.add_argument("--ood", nargs="+", metavar="IMAGES_OR_DATASET",
                    help="also report how well the out-of-distribution score tells these images (files, folders, "
                         "globs, or a MedMNIST subset's test split, e.g. pneumoniamnist) from the evaluated split: "
                         "AUROC and FPR at 95%% TPR")
    ev.set_defaults(func=_evaluate)

    cmp = sub.add_parser("compare", help="paired difference of two runs (or ensembles) on the same test images")
    cmp.add_argument("a", metavar="RUN_A", help="a training run folder, or several joined by commas (an ensemble)")
    cmp.add_argument("b", metavar="RUN_B", help="the run (or comma-joined ensemble) to compare against")
    cmp.add_argument("--split", default="test", choices=["val", "test"])
    add_run_options(cmp, "folder for compare.md and compare.json", output_required=False, bootstrap=2000)
    cmp.set_defaults(func=_compare)

    pred = sub.add_parser("predict", help="class probabilities for image files (PNG/JPEG/TIFF/DICOM) as CSV")
    add_model_options(pred, "CSV to write (path, prob_<class>..., predicted)")
    pred.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    pred.add_argument("--batch-size", type=int, default=32)
    pred.add_argument("--workers", type=int, default=0, help="image-reading processes")
    pred.set_defaults(func=_predict)

    exp = sub.add_parser("explain", help="class activation maps (HiResCAM or Grad-CAM) overlaid on the images")
    add_model_options(exp, "folder for <image>_<method>.png and maps.csv")
    exp.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    exp.add_argument("--method", choices=["hirescam", "gradcam"], default="hirescam",
                     help="hirescam (default: localises in MedMamba) or classic gradcam")
    exp.add_argument("--target", help="class (name or index) to explain; default: each image's prediction")
    exp.add_argument("--stage", type=int, default=-1, help="stage whose map is used (default -1: the last)")
    exp.set_defaults(func=_explain)

    srv = sub.add_parser("serve", help="a web page and HTTP API for trained models (pip install \"medmamba[web]\")")
    srv.add_argument("checkpoints", nargs="+", metavar="RUN_OR_CHECKPOINT",
                     help="training runs, checkpoint folders or weights files; several: a selector and their ensemble")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    srv.add_argument("--port", type=int, default=7860)
    srv.add_argument("--max-file-mb", type=float, default=20, help="largest upload accepted, in MB")
    srv.add_argument("--queue", type=int, default=64, help="requests that may wait; more are turned away")
    srv.add_argument("--device", help="cpu or cuda (default: cpu)")
    srv.set_defaults(func=_serve)

    ex = sub.add_parser("export", help="ONNX (checked with onnxruntime) or safetensors weights + JSON config")
    add_model_options(ex, "model.onnx, or weights.safetensors / a folder")
    ex.add_argument("--format", choices=["onnx", "safetensors", "hub"], default="onnx",
                    help="onnx; safetensors (weights + model card); hub (a folder for MedMamba.from_pretrained, "
                         "push_to_hub and timm's hf-hub: weights, card, config.json, README with test results)")
    ex.add_argument("--img-size", type=int, help="ONNX input size (default: the training size)")
    ex.add_argument("--opset", type=int, default=18)
    ex.add_argument("--check-images", nargs="*", help="real images also compared between onnxruntime and PyTorch")
    ex.add_argument("--fused-scan", action="store_true",
                    help="MedMamba: each SS2D scan as one custom node that onnxruntime runs with medmamba's CPU kernel "
                         "(several times faster; the file then needs Python with medmamba and onnxruntime-extensions, "
                         "opened with medmamba.deploy.export.onnx_session). Default: plain ONNX operators, any runtime")
    ex.set_defaults(func=_export)
    return parser


def main(argv=None) -> int:
    from .errors import MedMambaError
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MedMambaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last complete checkpoint is kept", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped early, e.g. `medmamba config | head`
        sys.stdout = None
        return 0


if __name__ == "__main__":
    sys.exit(main())
