"""Gradio app (Hugging Face Space): pneumonia decision support on chest X-rays.

`python app.py` serves the bundled model on port 7860; `MODEL_ID=user/repo python app.py` pulls a
model from the Hub. Endpoints for `gradio_client`: `/predict` (one file -> JSON), `/analyse` (the
UI's full answer, heatmap included) and `/predict_batch` (many files -> table + CSV).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

# Uploads land in a private temporary folder that is purged while serving and removed at exit:
# nothing a user sends is written anywhere lasting. Set before Gradio is imported.
UPLOAD_DIR = tempfile.mkdtemp(prefix="pneumonia-xray-")
os.environ.setdefault("GRADIO_TEMP_DIR", UPLOAD_DIR)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a medical demo reports nothing about its use
atexit.register(shutil.rmtree, UPLOAD_DIR, ignore_errors=True)

import gradio as gr  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from chestxray import ImageReadError, ModelLoadError, PneumoniaClassifier  # noqa: E402
from chestxray.batch import expand_paths, predict_files, write_csv  # noqa: E402
from chestxray.explain import grad_cam, overlay  # noqa: E402

logger = logging.getLogger("app")

DEFAULT_MODEL = str(Path(__file__).resolve().parent / "model")
DISCLAIMER = (
    "**Decision support for research and education — not a medical device.** It was trained on one "
    "hospital's paediatric X-rays, has not been cleared by any regulator, and must not be used to diagnose, "
    "treat or triage anyone. Uploads are processed in memory and temporary files, never kept."
)
MAX_FILE_SIZE = "25mb"
MAX_BATCH_FILES = 100
EXAMPLES_DATASET = "hf-vision/chest-xray-pneumonia"


def user_error(message: str) -> gr.Error:
    """A message for the person who sent the file; an expected outcome, so no traceback in the server log."""
    return gr.Error(message, title="Cannot analyse this file", print_exception=False)


def _upload_name(path: str) -> str:
    return Path(path).name


def _read_upload(classifier: PneumoniaClassifier, path: str | None) -> Image.Image:
    if not path:
        raise user_error("Upload a chest X-ray first (PNG, JPEG, TIFF, BMP, WebP or DICOM).")
    try:
        return classifier.read(path, name=_upload_name(path))
    except ImageReadError as error:
        raise user_error(str(error)) from None


def prediction_json(prediction, model_name: str) -> dict:
    """The JSON answer of `/predict`: plain types only, stable keys."""
    return {
        "decision": prediction.decision,
        "pneumonia_probability": round(prediction.pneumonia_probability, 4),
        "threshold": round(prediction.threshold, 4),
        "confidences": {label: round(p, 4) for label, p in prediction.probabilities.items()},
        "warning": prediction.warning,
        "model": model_name,
        "disclaimer": "Decision support for research and education; not a medical device.",
    }


def decision_markdown(prediction) -> str:
    probability, threshold = prediction.pneumonia_probability, prediction.threshold
    side = "at or above" if prediction.decision == "PNEUMONIA" else "below"
    text = (
        f"### Decision: **{prediction.decision}**\n\n"
        f"Calibrated probability of pneumonia: **{probability:.1%}**, {side} the model's operating threshold of "
        f"**{threshold:.1%}**, which was chosen on held-out validation X-rays."
    )
    if prediction.warning:
        text = f"⚠️ **{prediction.warning}** The result below is unreliable.\n\n" + text
    return text + f"\n\n{DISCLAIMER}"


def build_demo(classifier: PneumoniaClassifier, model_name: str, examples: list[str] | None = None) -> gr.Blocks:
    """The whole UI and API around one loaded classifier (the tests launch it with a tiny model)."""

    def predict(path: str | None) -> dict:
        image = _read_upload(classifier, path)
        return prediction_json(classifier.predict([image])[0], model_name)

    def analyse(path: str | None):
        image = _read_upload(classifier, path)
        prediction = classifier.predict([image])[0]
        heatmap = overlay(image, grad_cam(classifier, image))
        return prediction.probabilities, decision_markdown(prediction), heatmap, prediction_json(prediction, model_name)

    def predict_batch(paths: list[str] | None):
        if not paths:
            raise user_error("Upload one or more chest X-rays first.")
        if len(paths) > MAX_BATCH_FILES:
            raise user_error(f"{len(paths)} files is more than the {MAX_BATCH_FILES} a batch can take; split them up.")
        results = predict_files(classifier, [(_upload_name(p), p) for p in paths])
        rows = [[r.file, r.pneumonia_probability, r.decision or "", r.error or r.warning or ""] for r in results]
        csv_path = write_csv(results, Path(tempfile.mkdtemp(dir=UPLOAD_DIR)) / "pneumonia_predictions.csv")
        return rows, str(csv_path)

    with gr.Blocks(title="Pneumonia on chest X-rays", delete_cache=(600, 900)) as demo:
        gr.Markdown("# Pneumonia on paediatric chest X-rays\nUpload a frontal chest X-ray (PNG, JPEG, TIFF, BMP, WebP or DICOM).")
        gr.Markdown(DISCLAIMER, elem_classes="disclaimer")
        with gr.Tab("Single X-ray"):
            with gr.Row():
                with gr.Column():
                    # No file_types filter: DICOM often has no extension; the reader explains anything it cannot use.
                    upload = gr.File(label="Chest X-ray", type="filepath", elem_id="xray-upload")
                    analyse_button = gr.Button("Analyse", variant="primary", elem_id="analyse-button")
                    if examples:
                        gr.Examples(examples=[[path] for path in examples], inputs=[upload], label="Real X-rays")
                with gr.Column():
                    # No heading: the top bar is the argmax, but the decision is made at the stored threshold.
                    confidences = gr.Label(num_top_classes=2, label="Calibrated probabilities", show_heading=False, elem_id="confidences")
                    decision = gr.Markdown(elem_id="decision")
                    heatmap = gr.Image(label="What drove the PNEUMONIA score (Grad-CAM)", type="numpy", format="jpeg", interactive=False)
            with gr.Accordion("JSON (as returned by the /predict API)", open=False):
                answer = gr.JSON(label="Prediction")
            analyse_button.click(analyse, upload, [confidences, decision, heatmap, answer], api_name="analyse")
            # API-only twin of the button: one file in, the JSON answer out, no heatmap cost.
            predict_trigger = gr.Button(visible=False)
            predict_trigger.click(predict, upload, answer, api_name="predict")
        with gr.Tab("Batch"):
            batch_upload = gr.File(label=f"Up to {MAX_BATCH_FILES} X-rays", file_count="multiple", type="filepath")
            batch_button = gr.Button("Analyse all", variant="primary")
            table = gr.Dataframe(headers=["file", "P(pneumonia)", "decision", "note"], label="Results", interactive=False)
            csv_file = gr.File(label="CSV download")
            batch_button.click(predict_batch, batch_upload, [table, csv_file], api_name="predict_batch")
        with gr.Tab("About & API"):
            gr.Markdown(about_markdown(classifier, model_name))
    return demo


def about_markdown(classifier: PneumoniaClassifier, model_name: str) -> str:
    config = classifier.config
    return f"""
**Model**: `{model_name}` ({config.model_type}, {classifier.image_size}×{classifier.image_size} input, running on {classifier.runtime}).
Decision threshold **{classifier.threshold:.3f}**, calibration temperature **{classifier.temperature:.3f}** and bias
**{classifier.bias:.3f}** come from the model's `config.json`; all were chosen on patient-level validation data.

**Call it from Python** with `gradio_client`:

```python
from gradio_client import Client, handle_file

client = Client("http://127.0.0.1:7860/")  # or the Space id, e.g. "user/space"
client.predict(handle_file("xray.jpeg"), api_name="/predict")      # JSON decision
client.predict([handle_file("a.png"), handle_file("b.dcm")], api_name="/predict_batch")  # table + CSV
```
"""


def local_examples(folder: str, per_class: int = 2) -> list[str]:
    """A few images per class from EXAMPLES_DIR, copied into the temporary area Gradio serves from."""
    files = expand_paths([folder])
    picked: list[Path] = []
    for label in ("NORMAL", "PNEUMONIA"):
        picked += [f for f in files if f.parent.name.upper() == label][:per_class]
    picked = picked or files[: 2 * per_class]
    target = Path(tempfile.mkdtemp(dir=UPLOAD_DIR, prefix="examples-"))
    return [str(shutil.copy(f, target / f"{f.parent.name.lower()}_{f.name}")) for f in picked]


def hub_examples(per_class: int = 2) -> list[str]:
    """On a Space: a few test images of the Hub dataset, fetched once and cached; none if unreachable."""
    cache = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "pneumonia-app-examples"
    if not cache.is_dir() or not any(cache.iterdir()):
        try:
            from datasets import load_dataset

            stream = load_dataset(EXAMPLES_DATASET, split="test", streaming=True)
            names = stream.features["label"].names
            counts = {name: 0 for name in names}
            cache.mkdir(parents=True, exist_ok=True)
            for index, row in enumerate(stream):
                name = names[row["label"]]
                if counts[name] < per_class:
                    row["image"].convert("L").save(cache / f"{name.lower()}_{index}.jpeg", quality=92)
                    counts[name] += 1
                if all(c >= per_class for c in counts.values()) or index > 500:
                    break
        except Exception as error:  # the app must start without examples
            logger.warning("No examples from %s: %s", EXAMPLES_DATASET, error)
            return []
    return local_examples(str(cache), per_class)


def find_examples() -> list[str]:
    if os.environ.get("EXAMPLES_DIR"):
        return local_examples(os.environ["EXAMPLES_DIR"])
    if os.environ.get("SPACE_ID"):
        return hub_examples()
    return []


def server_port() -> int:
    return int(os.environ.get("GRADIO_SERVER_PORT") or os.environ.get("PORT") or 7860)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    model_id = os.environ.get("MODEL_ID", DEFAULT_MODEL)
    try:
        classifier = PneumoniaClassifier.from_pretrained(model_id, revision=os.environ.get("MODEL_REVISION"))
    except ModelLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    classifier.predict([Image.new("L", (classifier.image_size, classifier.image_size), 128)])  # warm-up
    model_name = "bundled model" if model_id == DEFAULT_MODEL else model_id
    demo = build_demo(classifier, model_name, find_examples())
    demo.queue(default_concurrency_limit=1, max_size=64).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        server_port=server_port(),
        max_file_size=MAX_FILE_SIZE,
        theme=gr.themes.Soft(),
        footer_links=["api"],
        prevent_thread_lock=True,
    )
    # Predictions are served from here on; the PyTorch model that Grad-CAM needs loads meanwhile
    # (a heatmap requested before it is ready waits for it).
    threading.Thread(target=classifier.load_model, name="load-pytorch-model", daemon=True).start()
    demo.block_thread()


if __name__ == "__main__":
    main()
