"""A web page (and an HTTP API) for trained models: upload scans, see the class probabilities and where the
model looked. Built on Gradio (``pip install "medmamba[web]"``) over ``Predictor`` and the activation maps:
the page shows exactly what ``medmamba predict`` and ``medmamba explain`` compute.

Safe by default: it listens on 127.0.0.1; it reads only files uploaded to it (anything else is refused);
unreadable, corrupt, oversized or decompression-bomb images are reported on the page while the server goes
on serving; and requests wait in a bounded queue, so a burst cannot exhaust memory.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import MedMambaError

ENSEMBLE = "ensemble of all"
DEFAULT_MAX_FILE_MB = 20


def _gradio():
    try:
        import gradio as gr
    except ImportError:
        raise MedMambaError('the web page needs Gradio: pip install "medmamba[web]"') from None
    return gr


@dataclass
class ServedModel:
    name: str
    predictor: object             # inference.Predictor
    card_markdown: str


def _card_markdown(name: str, source: Path, predictor) -> str:
    """The model card shown on the page: what the model is, what it was trained on, its test figures."""
    card = predictor.card
    lines = [f"**{name}**: `{card.model}`, {len(predictor.classes)} classes ({', '.join(predictor.classes)}), "
             f"{predictor.channels}-channel input at {predictor.img_size} px"
             + (", mirror-averaged" if predictor.tta else ""),
             f"Training data: {card.dataset or 'not recorded'}"
             + (f"; checkpoint of epoch {card.epoch} ({card.monitor} {card.value:.4f} on validation)"
                if card.epoch and card.value is not None else "")]
    if card.temperature:
        lines.append(f"Calibrated: temperature {card.temperature:.3f} fitted on the validation split")
    from ..evaluation.evaluate import run_report
    report = run_report(source)
    if report is not None:
        m = report["metrics"]
        ci = report.get("intervals", {})

        def cell(key):
            low_high = ci.get(key)
            return f"{m[key]:.3f}" + (f" ({low_high[0]:.3f}-{low_high[1]:.3f})" if low_high else "")
        lines.append(f"Test split ({m['n']} images): accuracy {cell('accuracy')}, AUC {cell('auc')}, "
                     f"sensitivity {cell('sensitivity')}, specificity {cell('specificity')}")
    else:
        lines.append("No test report beside this checkpoint.")
    return "  \n".join(lines)


def load_models(checkpoints: Sequence[str | os.PathLike], device=None, scan_backend: str = "auto") -> list[ServedModel]:
    """One ``Predictor`` per checkpoint (a run folder, a checkpoint folder or a weights file)."""
    from .inference import Predictor
    models, seen = [], set()
    for path in checkpoints:
        predictor = Predictor.from_checkpoint(path, scan_backend=scan_backend, device=device or "cpu")
        name = Path(path).name or str(path)
        while name in seen:
            name += "'"
        seen.add(name)
        models.append(ServedModel(name, predictor, _card_markdown(name, Path(path), predictor)))
    if len(models) > 1:
        first = models[0].predictor
        for m in models[1:]:
            if m.predictor.classes != first.classes or m.predictor.multi_label != first.multi_label:
                raise MedMambaError(f"{m.name} predicts {m.predictor.classes}, {models[0].name} {first.classes}: "
                                    f"models served together must share their classes")
    return models


class Service:
    """What the page and the API do, without Gradio: predictions, maps and the CSV of a batch of files."""

    def __init__(self, models: list[ServedModel], upload_dir: Path):
        self.models = {m.name: m for m in models}
        self.upload_dir = upload_dir.resolve()

    @property
    def choices(self) -> list[str]:
        return list(self.models) + ([ENSEMBLE] if len(self.models) > 1 else [])

    def _members(self, choice: Optional[str]) -> list[ServedModel]:
        if choice in (None, "", ENSEMBLE):
            return list(self.models.values()) if choice == ENSEMBLE else [next(iter(self.models.values()))]
        if choice not in self.models:
            raise MedMambaError(f"unknown model {choice!r}; served: {', '.join(self.choices)}")
        return [self.models[choice]]

    def uploaded(self, path: str | os.PathLike) -> Path:
        """The path of an uploaded file; anything outside the upload folder is refused."""
        resolved = Path(path).resolve()
        if self.upload_dir not in resolved.parents:
            raise MedMambaError(f"{Path(path).name}: not an uploaded file")
        return resolved

    def predict(self, files: Sequence[str], choice: Optional[str] = None):
        """A ``PredictionResult`` for uploaded ``files`` (unreadable ones in its ``failures``); an ensemble
        averages the models' probabilities as ``medmamba evaluate`` does."""
        from .inference import PredictionResult, failure_reason
        members = self._members(choice)
        paths, failures = [], []
        for f in files or []:
            try:
                paths.append(str(self.uploaded(f)))
            except MedMambaError as e:
                failures.append((Path(f).name, str(e).split(": ", 1)[-1]))
        import torch
        probs_per_model, good, ood = [], None, None
        for member in members:
            p = member.predictor
            kept, batch, bad = [], [], []
            for path in paths:
                try:
                    batch.append(p.read(path)[1])
                    kept.append(path)
                except Exception as e:  # DataError for unreadable files and bombs, or a transform failing
                    bad.append((Path(path).name, failure_reason(e, path).replace(path, Path(path).name)))
            if good is None:
                good, failures = kept, failures + bad
            probs_per_model.append(p.predict_batch(torch.stack(batch)) if batch else
                                   np.zeros((0, len(p.classes))))
            if len(members) == 1 and p.ood is not None:
                ood = p.ood_scores(torch.stack(batch)) if batch else np.zeros(0)
        first = members[0].predictor
        card = first.card if len(members) == 1 else None
        return PredictionResult(paths=good or [], probabilities=np.mean(probs_per_model, axis=0),
                                classes=first.classes, multi_label=first.multi_label, failures=failures,
                                threshold=card.threshold if card else None, positive=card.positive if card else 1,
                                conformal=card.conformal if card else None, ood_scores=ood,
                                ood_threshold=first.ood.threshold if ood is not None else None)

    def activation_map(self, path: str, choice: Optional[str], target: Optional[str], opacity: float) -> np.ndarray:
        """HiResCAM overlay of one uploaded image for class ``target`` (default: the prediction)."""
        from ..artifacts.card import class_index
        from ..evaluation.cam import class_activation_map, overlay
        member = self._members(choice)[0]   # an ensemble's map is its first model's
        p = member.predictor
        image, x = p.read(str(self.uploaded(path)))
        if target in (None, "", "predicted") and p.card.threshold is not None and not p.multi_label:
            # the class the page calls predicted, decided as the predicted column decides it: the card's
            # operating point, not the argmax
            target = self.predict([path], choice).predicted()[0]
        k = None if target in (None, "", "predicted") else class_index(target, p.classes)
        cam = class_activation_map(p.model, x[None].to(p.device), target=k, multi_label=p.multi_label,
                                   temperature=p.card.temperature)
        return overlay(image, cam.maps[0].cpu(), alpha=float(opacity))


def build_app(models: list[ServedModel], upload_dir: Path):
    """The Gradio page: upload, predictions table, per-image probabilities and map, model card, CSV download."""
    gr = _gradio()
    service = Service(models, upload_dir)
    first = models[0].predictor
    suffixes = sorted({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"})

    def run(files, choice):
        if not files:
            return (gr.update(value=None), "Upload one or more images first.", None, gr.update(choices=[], value=None),
                    {}, "", "", "", None, [])
        result = service.predict([getattr(f, "name", f) for f in files], choice)
        csv_path = Path(tempfile.mkdtemp(dir=upload_dir)) / "predictions.csv"
        csv_path.write_text(result.to_csv(_display_name))
        k = len(result.classes)
        rows = [[row[0], *[round(float(v), 6) for v in row[1:1 + k]], *map(str, row[1 + k:])]
                for row in result.rows(_display_name)]
        errors = "\n".join(f"- **{name}**: {reason}" for name, reason in result.failures)
        message = (f"{len(result.paths)} image(s) predicted" + (f"; {len(result.failures)} not read:\n\n{errors}"
                                                                if result.failures else "."))
        names = [Path(p).name for p in result.paths]
        sets = result.sets() or [""] * len(names)
        scores = result.ood_scores.tolist() if result.ood_scores is not None else [None] * len(names)
        state = [(name, path, row.tolist(), label, s, score, result.ood_threshold) for name, path, row, label, s, score
                 in zip(names, result.paths, result.probabilities, result.predicted(), sets, scores)]
        shown = names[0] if names else None
        label, predicted, prediction_set, badge, overlay_image = details(state, shown, choice, "predicted", 0.45)
        return (gr.update(value=rows, headers=["file", *result.header()[1:]]), message, str(csv_path),
                gr.update(choices=names, value=shown), label, predicted, prediction_set, badge, overlay_image, state)

    def details(state, shown, choice, target, opacity):
        for name, path, probs, predicted, prediction_set, score, threshold in state or []:
            if name == shown:
                image = service.activation_map(path, choice, target, opacity)
                return (dict(zip(first.classes, probs)), predicted, set_text(prediction_set, choice),
                        ood_badge(score, threshold), image)
        return {}, "", "", "", None

    def ood_badge(score, threshold) -> str:
        if score is None:
            return "No out-of-distribution score for this model."
        if score > threshold:
            return (f"### ⚠ Out of distribution\nThis image is unlike the images the model was trained on (score "
                    f"{score:.3g} > {threshold:.3g}): its answer should not be trusted.")
        return f"In distribution: like the training images (score {score:.3g} ≤ {threshold:.3g})."

    def set_text(prediction_set: str, choice) -> str:
        members = service._members(choice)
        card = members[0].predictor.card if len(members) == 1 else None
        if card is None or not card.conformal:
            return "no prediction sets calibrated for this model"
        classes = prediction_set.split("|") if prediction_set else []
        verdict = ("one class" if len(classes) == 1 else "none of the classes fits" if not classes
                   else f"undecided between {len(classes)} classes")
        return (f"{' | '.join(classes) or '(empty)'}: {verdict} (holds the true class for "
                f"{card.conformal['coverage']:.0%} of images like the validation split)")

    def card(choice):
        members = service._members(choice)
        return "\n\n".join(m.card_markdown for m in members)

    def api_predict(file, choice=None):
        """One image in, its class probabilities and predicted class out (JSON)."""
        result = service.predict([getattr(file, "name", file)], choice)
        if result.failures:
            raise gr.Error(f"{result.failures[0][0]}: {result.failures[0][1]}")
        sets, flagged = result.sets(), result.flagged()
        return {"probabilities": dict(zip(result.classes, map(float, result.probabilities[0]))),
                "predicted": result.predicted()[0], **({"set": sets[0].split("|")} if sets else {}),
                **({"ood_score": float(result.ood_scores[0]), "out_of_distribution": bool(flagged[0])}
                   if flagged is not None else {})}

    with gr.Blocks(title="MedMamba") as demo:
        gr.Markdown("# MedMamba\nDrop scans below (PNG, JPEG, TIFF 8/16-bit, DICOM), then **Predict**. "
                    "Research software: not for diagnosis.")
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="Images", file_count="multiple", file_types=suffixes, elem_id="upload")
                choice = gr.Dropdown(service.choices, value=service.choices[0], label="Model", elem_id="model")
                button = gr.Button("Predict", variant="primary", elem_id="predict")
                message = gr.Markdown(elem_id="message")
                model_card = gr.Markdown(card(service.choices[0]), elem_id="card")
            with gr.Column(scale=2):
                table = gr.Dataframe(headers=["file", *[f"prob_{c}" for c in first.classes], "predicted"]
                                     + (["set"] if first.card.conformal and not first.multi_label else []),
                                     label="Predictions", interactive=False, elem_id="results")
                download = gr.File(label="Predictions as CSV (the columns of medmamba predict)", elem_id="csv")
                with gr.Row():
                    shown = gr.Dropdown([], label="Image", elem_id="image-choice")
                    target = gr.Dropdown(["predicted", *first.classes], value="predicted", label="Map for class",
                                         elem_id="target")
                    opacity = gr.Slider(0, 1, value=0.45, step=0.05, label="Map opacity", elem_id="opacity")
                with gr.Row():
                    probs = gr.Label(label="Class probabilities", elem_id="probabilities")
                    overlay_image = gr.Image(label="HiResCAM", type="numpy", elem_id="overlay")
                predicted = gr.Textbox(label="Predicted class", elem_id="predicted", interactive=False)
                prediction_set = gr.Textbox(label="Prediction set", elem_id="set", interactive=False)
                badge = gr.Markdown(elem_id="ood")
        state = gr.State([])
        button.click(run, [files, choice], [table, message, download, shown, probs, predicted, prediction_set,
                                            badge, overlay_image, state], api_name=False)
        for control in (shown, target, opacity):
            control.change(details, [state, shown, choice, target, opacity],
                           [probs, predicted, prediction_set, badge, overlay_image], api_name=False)
        choice.change(card, choice, model_card, api_name=False)
        # The HTTP API (gradio_client): one image in, JSON out; hidden components give it typed parameters.
        with gr.Row(visible=False):
            api_file = gr.File(label="image")
            api_model = gr.Textbox(value=service.choices[0], label="model")
            api_out = gr.JSON()
            gr.Button().click(api_predict, [api_file, api_model], api_out, api_name="predict")
    return demo


def _display_name(path: str) -> str:
    """The uploaded file's name: the server's temporary path means nothing to the person who uploaded it."""
    return Path(path).name


def serve(checkpoints: Sequence[str | os.PathLike], host: str = "127.0.0.1", port: int = 7860,
          max_file_mb: float = DEFAULT_MAX_FILE_MB, queue_size: int = 64, device=None, block: bool = True):
    """Load the models, build the page and serve it (``block=False``: return the running app)."""
    models = load_models(checkpoints, device=device)
    upload_dir = Path(tempfile.mkdtemp(prefix="medmamba-serve-"))
    os.environ["GRADIO_TEMP_DIR"] = str(upload_dir)   # uploads land here, and only here is read
    demo = build_app(models, upload_dir)
    # One request runs at a time (a model uses every core anyway); at most queue_size wait, the rest are
    # turned away at once rather than piling up in memory.
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    demo.launch(server_name=host, server_port=port, max_file_size=f"{max_file_mb}mb", prevent_thread_lock=not block,
                show_error=True, quiet=False)
    return demo
