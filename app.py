"""Gradio app (Hugging Face Space): pneumonia decision support on chest X-rays.

`python app.py` serves the bundled model on http://127.0.0.1:7860; `MODEL_ID=user/repo python app.py` pulls
a model from the Hub. Endpoints for `gradio_client`: `/predict` (one file -> JSON), `/analyse` (the page's
full answer, heatmap included) and `/predict_batch` (many files -> table + CSV).
"""

from __future__ import annotations

import atexit
import html
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

# Every upload and every output file lives in this private folder: each upload is deleted as soon as it is
# answered (or after WAITING_UPLOAD_LIFETIME_S if it never is), a batch's CSV after CSV_LIFETIME_S, anything else
# after FILE_LIFETIME_S, and the folder itself at exit (Ctrl-C or SIGTERM) or, after a hard kill, at the next
# start. Set before Gradio is imported, and not overridable: "never kept" must hold.
TEMP_PREFIX = "pneumonia-xray-"
UPLOAD_DIR = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-")
os.environ["GRADIO_TEMP_DIR"] = UPLOAD_DIR
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a medical demo reports nothing about its use
atexit.register(shutil.rmtree, UPLOAD_DIR, ignore_errors=True)

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.requests import Request  # noqa: E402

from chestxray import ImageReadError, ModelLoadError, PneumoniaClassifier  # noqa: E402
from chestxray.batch import expand_paths, predict_files, read_split_list, write_csv  # noqa: E402
from chestxray.explain import COLORMAP_ANCHORS, EVIDENCE_FLOOR, display_image, evidence, grad_cam, overlay  # noqa: E402
from chestxray.ood import OUTSIDE_POPULATION  # noqa: E402
from admission import UNKNOWN_CLIENT, BatchAdmission, ClientAdmission, client_address, waiting_events  # noqa: E402
from http_guard import HttpGuard, UploadQuota  # noqa: E402

logger = logging.getLogger("app")

DEFAULT_MODEL = str(Path(__file__).resolve().parent / "model")
DISCLAIMER = (
    "**Decision support for research and education — not a medical device.** It was trained on one "
    "hospital's X-rays of children aged 1–5, has not been cleared by any regulator, and must not be used to "
    "diagnose, treat or triage anyone. Each upload is deleted as soon as it has been answered; nothing is kept."
)
SHORT_DISCLAIMER = "Decision support for research and education; not a medical device."
ERROR_TITLE = "Cannot analyse this file"
WAITING_TEXT = "*The answer for your X-ray appears here.*"
MAX_FILE_SIZE_MB = 25
MAX_FILE_SIZE = f"{MAX_FILE_SIZE_MB}mb"
MAX_BATCH_FILES = 100
BATCH_HEADERS = ["file", "P(pneumonia)", "decision", "note"]
BATCH_TIME_BUDGET_S = 60  # one batch holds the batch worker at most about this long
# Batches waiting behind the running one; more are turned away at once, so batches cannot fill the shared queue
# (64 events) and single X-rays always find room. One page (on a Space, one client) may have one batch waiting.
MAX_WAITING_BATCHES = 4
SINGLE_XRAY = "single_xray"  # the concurrency group of every one-file event (one at a time between them)
# Requests one client (an address; on a Space, as Hugging Face's proxy saw it) may have waiting: on a Space 16 of
# the queue's 64, elsewhere no limit (a load test from one machine is many users at one address).
MAX_WAITING_PER_CLIENT = int(os.environ.get("MAX_WAITING_PER_CLIENT", "16" if os.environ.get("SPACE_ID") else "0"))
FILE_LIFETIME_S = 45  # outputs (heatmaps) are fetched within seconds; the purge runs every PURGE_EVERY_S
# A batch's CSV waits for its reader to look through the table first: kept this long, in a folder named CSV_PREFIX...
# (upload folders are named by Gradio with hexadecimal digits only, so no upload can claim the longer lifetime).
CSV_LIFETIME_S = 15 * 60
CSV_PREFIX = "csv-"
PURGE_EVERY_S = 10
# An upload still waiting for its answer (queued behind a long batch, or a batch still reading) is kept this long.
WAITING_UPLOAD_LIFETIME_S = 600
# MB one client may upload in that time: on a Space 1024 (so that no one client can bring the disk down to its
# reserve, which refuses every upload), elsewhere no limit, as for MAX_WAITING_PER_CLIENT.
MAX_UPLOAD_MB_PER_CLIENT = int(os.environ.get("MAX_UPLOAD_MB_PER_CLIENT", "1024" if os.environ.get("SPACE_ID") else "0"))
IMAGE_HEIGHT = 420  # px on the page, for the upload and the heatmap alike, whatever the file's size
EXAMPLES_DATASET = "hf-vision/chest-xray-pneumonia"
HEATMAP_CAPTION = (
    "Colour marks the regions that pushed the PNEUMONIA score up, scaled by the probability: a film the model "
    "calls NORMAL stays uncoloured. It shows what the model looked at, not where disease is; colour outside "
    "the lungs (edges, markers, the body's outline) means the model used something other than the lungs."
)


PAGE_CSS = """
.population-warning { border-left: 6px solid #d97706; background: #fef3c7; color: #78350f; padding: 0.6em 0.9em;
                      border-radius: 6px; margin-bottom: 0.8em; }
/* uploads are deleted once answered: their own download links would only fail */
#xray-upload a, #batch-upload a { pointer-events: none; color: inherit; text-decoration: none; }
@media (max-width: 767px) {  /* a phone: the answer right under the file, the picture after it */
  #upload-column { display: contents; }
  #xray-upload { order: 1; } #upload-hint { order: 2; } #result-column { order: 3; } #upload-preview { order: 4; }
  #xray-upload, #upload-hint, #upload-preview { width: 100%; }
  #batch-results .table-container { min-width: 600px; }  /* scrolls sideways rather than breaking every word */
}
"""
# Soft, with its field labels and footer dark enough to read: its own reach 3.6:1 and 2.4:1 against their
# backgrounds, below the 4.5:1 that WCAG asks of text.
PAGE_THEME = gr.themes.Soft().set(block_label_text_color="*primary_800", block_title_text_color="*primary_800",
                                  body_text_color_subdued="*neutral_600")
# In the browser, when the batch's list of files changes: the old table goes, and a list longer than a batch takes
# is said at once (the request would be refused when the button is pressed).
# The sentence follows the count, in the table as in the batch's own refusal.
TOO_MANY_FILES = (f" files is more than the {MAX_BATCH_FILES} a batch takes: remove some (x beside each), or split them "
                  "into several batches.")
BATCH_LIST_JS = (
    f"(files) => {{ const count = (files || []).length, headers = {json.dumps(BATCH_HEADERS)}; "
    f"const data = count > {MAX_BATCH_FILES} ? [['', null, 'too many', count + {json.dumps(TOO_MANY_FILES)}]] : []; "
    "return [{headers: headers, data: data}, null]; }"
)
# Screen readers hear the answer when it arrives.
PAGE_JS = "() => { document.getElementById('decision')?.setAttribute('aria-live', 'polite'); }"


PREDICT_DESCRIPTION = (
    "One X-ray file (PNG, JPEG, TIFF, BMP, WebP or DICOM) in, a JSON answer out: decision (NORMAL, PNEUMONIA, or null "
    "when the image is not a frontal chest X-ray), pneumonia_probability, threshold, confidences, gate, gate_reason, "
    "message, model, disclaimer. A file that cannot be read raises an error with a one-line message.")
ANALYSE_DESCRIPTION = ("The page's answer for one X-ray: the calibrated probabilities, the decision in words (Markdown), "
                       "the Grad-CAM heatmap (JPEG) and the JSON of /predict.")
BATCH_DESCRIPTION = (f"Up to {MAX_BATCH_FILES} X-ray files: a table (file, P(pneumonia), decision, note) and a CSV "
                     f"of the same rows, kept for {CSV_LIFETIME_S // 60} minutes. An unreadable file is a row that says why.")


def user_error(message: str) -> gr.Error:
    """A message for the person who sent the file; an expected outcome, so no traceback in the server log."""
    return gr.Error(plain(message), title=ERROR_TITLE, print_exception=False)


def plain(text: str | None) -> str | None:
    """Messages quote file names with Markdown backticks; tables, pop-ups and JSON show typographic quotes."""
    return re.sub(r"`([^`]*)`", r"“\1”", text) if text else text


def _upload_name(path: str) -> str:
    return Path(path).name


EXAMPLES_PREFIX = "examples-"


class UploadFolder:
    """The private folder uploads and outputs live in, and the rules that keep it empty."""

    def __init__(self, root: str) -> None:
        self.root = Path(root).resolve()
        self.protected: set[str] = set()  # Gradio's cached copies of the examples
        # Identical files are stored at one path: for each, how many of its uploads, by each client, still wait for
        # an answer.
        self.waiting: dict[str, Counter[str]] = {}
        self.lock = threading.Lock()

    def register(self, paths: list[str], client: str = UNKNOWN_CLIENT) -> None:
        """Called for every stored upload (by the HTTP guard, with the client that sent it), before any request can
        use it."""
        with self.lock:
            for path in paths:
                self.waiting.setdefault(str(Path(path).resolve()), Counter())[client] += 1

    def is_example(self, file: Path) -> bool:
        """Gradio's cached copies, and the app's own examples folder (a child of the root: an upload's name may
        start with the same prefix)."""
        parts = file.relative_to(self.root).parts
        return str(file) in self.protected or (len(parts) > 1 and parts[0].startswith(EXAMPLES_PREFIX))

    def is_batch_csv(self, file: Path) -> bool:
        parts = file.relative_to(self.root).parts
        return len(parts) == 2 and parts[0].startswith(CSV_PREFIX) and file.suffix == ".csv"

    def holds(self, path: str) -> bool:
        """Whether a file reference points into this folder, where uploads and examples are: anything else is no
        file this app received (a URL resolves as a relative path, outside it)."""
        try:
            return self.root in Path(path).resolve().parents
        except (OSError, ValueError):  # a NUL byte, a name too long
            return False

    def discard(self, path: str | None, client: str = UNKNOWN_CLIENT) -> None:
        """Delete an answered upload (and its folder once empty), unless it is an example or another upload of the
        same file is still waiting for its answer. Gradio names a folder by the file's content, so identical bytes
        sent under two names, or by two people, share it: the other's file stays until its own answer. An answer
        counts down only its own client's uploads: another client that names the path (it needs the very bytes) or
        names it twice in one batch cannot delete someone's upload that still waits."""
        if not path:
            return
        file = Path(path).resolve()
        if self.root not in file.parents or self.is_example(file):
            return
        with self.lock:
            uploads = self.waiting.get(str(file), Counter())
            if uploads[client] > 0:
                uploads[client] -= 1
            if +uploads:  # some client's upload of it still waits (Counter's unary + keeps positive counts)
                return
            self.waiting.pop(str(file), None)
        try:
            file.unlink(missing_ok=True)
            if file.parent != self.root:
                file.parent.rmdir()
        except OSError:  # a folder sent as the file, or a folder another upload still uses
            pass

    def purge(self, max_age_s: float, waiting_max_age_s: float = WAITING_UPLOAD_LIFETIME_S,
              csv_max_age_s: float = CSV_LIFETIME_S) -> None:
        """Delete files older than `max_age_s` (outputs, spool files of refused requests), batch CSVs older than
        `csv_max_age_s`, and uploads still waiting for their answer once older than `waiting_max_age_s` (never
        asked about, or the queue gave up)."""
        now = time.time()
        with self.lock:
            waiting = set(self.waiting)
        try:
            files = list(self.root.rglob("*"))  # listed first: the walk must not enter a folder removed below
        except OSError:  # a folder removed by an answer while it was listed: the next purge sees the rest
            return
        for file in files:
            try:
                key = str(file.resolve())
                max_age = (waiting_max_age_s if key in waiting else csv_max_age_s if self.is_batch_csv(file)
                           else max_age_s)
                if file.is_file() and not self.is_example(file) and file.stat().st_mtime < now - max_age:
                    file.unlink()
                    with self.lock:
                        self.waiting.pop(key, None)  # an upload nobody asked about
                    if file.parent != self.root:
                        file.parent.rmdir()  # the folder it was the last file of (only an empty one goes)
            except OSError:
                continue
        # Other empty folders only once old: Gradio makes a folder first and writes the file into it a moment later,
        # and removing it in between cost that request its answer (a FileNotFoundError).
        try:
            folders = sorted((p for p in self.root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        except OSError:
            return
        for folder in folders:
            try:
                if folder.stat().st_mtime < now - max_age_s:
                    folder.rmdir()  # only empty ones
            except OSError:
                continue

    def start_purging(self, every_s: float = PURGE_EVERY_S, max_age_s: float = FILE_LIFETIME_S) -> None:
        def loop() -> None:
            while True:
                time.sleep(every_s)
                self.purge(max_age_s)

        threading.Thread(target=loop, name="purge-uploads", daemon=True).start()


def remove_stale_folders(temp_root: str = tempfile.gettempdir()) -> None:
    """Upload folders left by an app that was killed outright (SIGKILL, out of memory) go at the next start."""
    for folder in Path(temp_root).glob(f"{TEMP_PREFIX}*-*"):
        pid = folder.name[len(TEMP_PREFIX):].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


API_EXAMPLE_FILE = "chest_xray.jpeg"


def with_local_api_example(upload: gr.File) -> gr.File:
    """The "Use via API" page writes each file parameter's example as handle_file(...) of its `url`: Gradio's own is a
    PDF's URL, which this app refuses (it never downloads URLs), so the page's snippet could not run. Set on the
    instance: a subclass of a component makes Gradio write a type stub (`app.pyi`) beside this file at each import."""
    payload = {"path": API_EXAMPLE_FILE, "url": API_EXAMPLE_FILE, "orig_name": API_EXAMPLE_FILE, "meta": {"_type": "gradio.FileData"}}
    single = upload.file_count == "single"
    upload.example_payload = lambda: payload if single else [payload]
    upload.example_value = lambda: API_EXAMPLE_FILE if single else [API_EXAMPLE_FILE]
    return upload


def refused(prediction) -> bool:
    """The gate decided this is not a frontal chest X-ray: no decision, no probability."""
    return prediction.decision is None


def prediction_json(prediction, model_name: str) -> dict:
    """The JSON answer of `/predict`: plain types only, stable keys; `decision` is null when the gate refuses."""
    probability = prediction.pneumonia_probability
    return {
        "decision": prediction.decision,
        "pneumonia_probability": None if probability is None else round(probability, 4),
        "threshold": round(prediction.threshold, 4),
        "confidences": None if probability is None else {label: round(p, 4) for label, p in prediction.probabilities.items()},
        "gate": prediction.gate,
        "gate_reason": prediction.gate_reason,
        "message": plain(prediction.message),
        "model": model_name,
        "disclaimer": SHORT_DISCLAIMER,
    }


def decision_markdown(prediction) -> str:
    note = plain(prediction.message)
    if refused(prediction):
        return f"### No decision: this does not look like a frontal chest X-ray\n\n{note or ''}"
    probability, threshold = prediction.pneumonia_probability, prediction.threshold
    side = "at or above" if prediction.decision == "PNEUMONIA" else "below"
    if prediction.gate == OUTSIDE_POPULATION:  # an adult: the answer stands, but nothing vouches for it
        headline, label = f"{prediction.decision} (not validated for this patient)", "Probability of pneumonia, as calibrated on children's X-rays"
    else:
        headline, label = prediction.decision, "Calibrated probability of pneumonia"
    text = (
        f"### Decision: **{headline}**\n\n"
        f"{label}: **{shown_percent(probability)}**, {side} the model's operating threshold of "
        f"**{threshold:.1%}**, which was chosen on held-out validation X-rays."
    )
    if note:
        text = f'<div class="population-warning" role="alert">⚠️ <strong>{html.escape(note)}</strong></div>\n\n' + text
    return text


def shown_percent(probability: float) -> str:
    """No film is 100 % or 0 % anything: the extremes read as "> 99.9%" and "< 0.1%" (the JSON keeps the number)."""
    if probability >= 0.9995:
        return "> 99.9%"
    if probability < 0.0005:
        return "< 0.1%"
    return f"{probability:.1%}"


def error_markdown(message: str) -> str:
    return f"### {ERROR_TITLE}\n\n{plain(message)}"


def heatmap_legend_html() -> str:
    stops = ", ".join(f"rgb{colour}" for colour in COLORMAP_ANCHORS)
    return (
        '<div id="heatmap-legend" style="font-size:0.85em">'
        f'<div style="height:12px;border-radius:3px;background:linear-gradient(to right, {stops})"></div>'
        '<div style="display:flex;justify-content:space-between">'
        f"<span>weak (under {EVIDENCE_FLOOR:.0%} of the scale: left uncoloured)</span><span>strong evidence for PNEUMONIA</span></div>"
        f"<p>{html.escape(HEATMAP_CAPTION)}</p></div>"
    )


class RecentAnswers:
    """Which uploads each page was answered about in the last minute (names only, no pixels). Gradio can run the
    page's change event a second time for the same file (the trigger mode runs the current value again after a run
    in flight): by then that file is answered and deleted, and the second run replaced the right answer with "does
    not exist". It now leaves the answer on screen."""

    def __init__(self, lifetime_s: float = 60.0, max_entries: int = 4096) -> None:
        self.lifetime_s, self.max_entries = lifetime_s, max_entries
        self.entries: dict[tuple[str | None, str], float] = {}
        self.lock = threading.Lock()

    def add(self, session: str | None, path: str) -> None:
        now = time.monotonic()
        with self.lock:
            self.entries.pop((session, path), None)
            self.entries[(session, path)] = now
            while self.entries and (len(self.entries) > self.max_entries
                                    or next(iter(self.entries.values())) < now - self.lifetime_s):
                del self.entries[next(iter(self.entries))]  # the oldest first: the dict keeps insertion order

    def holds(self, session: str | None, path: str) -> bool:
        with self.lock:
            added = self.entries.get((session, path))
        return added is not None and added >= time.monotonic() - self.lifetime_s


class Handlers:
    """What the page and the API run around one loaded classifier. Each upload is read once and deleted, and
    each request passes the queue's admission first (admission.py); `demo` is set once the page is built."""

    def __init__(self, classifier: PneumoniaClassifier, model_name: str, uploads: UploadFolder) -> None:
        self.classifier, self.model_name, self.uploads = classifier, model_name, uploads
        self.batches, self.clients = BatchAdmission(), ClientAdmission()
        self.answered = RecentAnswers()
        self.demo: gr.Blocks | None = None

    def read_upload(self, path: str | None, request: gr.Request | None) -> Image.Image:
        if not path:
            raise ImageReadError("Upload a chest X-ray first (PNG, JPEG, TIFF, BMP, WebP or DICOM).")
        try:
            return self.classifier.read(path, name=_upload_name(path))
        finally:
            self.uploads.discard(path, client_address(request))  # the decoded image is all that is needed: it goes now

    def heatmap_for(self, image: Image.Image, prediction, shown: Image.Image | None = None) -> np.ndarray | None:
        """The heatmap over `shown` (the upload as displayed), or None when the gate refused the image."""
        if refused(prediction):
            return None
        shown = shown if shown is not None else display_image(image)
        return overlay(shown, evidence(grad_cam(self.classifier, image), prediction.pneumonia_probability))

    def read_for_api(self, path: str | None, request: gr.Request) -> Image.Image:
        try:
            return self.read_upload(path, request)
        except ImageReadError as error:
            raise user_error(str(error)) from None

    def predict(self, path: str | None, request: gr.Request) -> dict:
        self.clients.started(client_address(request))
        return prediction_json(self.classifier.predict([self.read_for_api(path, request)])[0], self.model_name)

    def analyse(self, path: str | None, request: gr.Request):
        self.clients.started(client_address(request))
        image = self.read_for_api(path, request)
        prediction = self.classifier.predict([image])[0]
        probabilities = None if refused(prediction) else prediction.probabilities
        return (probabilities, decision_markdown(prediction), self.heatmap_for(image, prediction),
                prediction_json(prediction, self.model_name))

    @staticmethod
    def cleared(decision_text: str) -> tuple:
        """No picture, bars, heatmap, legend or JSON: only `decision_text` where the decision goes."""
        hidden = gr.update(value=None, visible=False)
        return hidden, hidden, decision_text, hidden, gr.update(visible=False), None

    def show_upload(self, path: str | None, request: gr.Request):
        """The page's answer to a new file (or to a cleared one): every output follows the input."""
        self.clients.started(client_address(request))
        if not path:
            return self.cleared(WAITING_TEXT)
        if not Path(path).exists() and self.answered.holds(request.session_hash, path):
            return (gr.skip(),) * 6  # a second run for a file this page was already answered about: keep that answer
        try:
            image = self.read_upload(path, request)
        except ImageReadError as error:
            return self.cleared(error_markdown(str(error)))
        finally:
            self.answered.add(request.session_hash, path)
        prediction = self.classifier.predict([image])[0]
        shown = display_image(image)
        heatmap = self.heatmap_for(image, prediction, shown)
        shows_result = not refused(prediction)
        return (
            gr.update(value=shown, visible=True),  # a refused image too: the person sees what they sent
            gr.update(value=prediction.probabilities if shows_result else None, visible=shows_result),
            decision_markdown(prediction),
            gr.update(value=heatmap, visible=shows_result),
            gr.update(visible=shows_result),
            prediction_json(prediction, self.model_name),
        )

    @staticmethod
    def batch_size_problem(paths: list[str] | None) -> str | None:
        if not paths:
            return "Upload one or more chest X-rays first."
        if len(paths) > MAX_BATCH_FILES:
            return f"{len(paths)}{TOO_MANY_FILES}"
        return None

    def client_refusal(self, request: gr.Request) -> str | None:
        return self.clients.refusal(lambda: [client_address(event.request) for event in waiting_events(self.demo)],
                                    client_address(request), MAX_WAITING_PER_CLIENT)

    def admit(self, _path: str | None, request: gr.Request):
        """Runs when a request asks to join the queue, before it waits (see admission.py)."""
        message = self.client_refusal(request)
        return gr.validate(message is None, message or "")

    @property
    def admit_single(self):
        """A validator costs each request a few ms (Gradio prepares the inputs for it): only where there is a limit."""
        return self.admit if MAX_WAITING_PER_CLIENT > 0 else None

    def admit_batch(self, paths: list[str] | None, request: gr.Request):
        """A batch that would only wait to be refused, or that would crowd the queue, is told so at once (the files
        stay uploaded, so a retry from the page works)."""
        waiting = lambda: [self.batch_owner(event.request, event.session_hash) for event in waiting_events(self.demo)  # noqa: E731
                           if event.fn.api_name == "predict_batch"]
        message = (self.batch_size_problem(paths) or self.client_refusal(request)
                   or self.batches.refusal(waiting, self.batch_owner(request, request.session_hash), MAX_WAITING_BATCHES,
                                           BATCH_TIME_BUDGET_S))
        return gr.validate(message is None, message or "")

    @staticmethod
    def batch_owner(request, session_hash: str | None) -> str | None:
        """Who may have one batch waiting: a page (its session), or on a Space a client (its address), since a
        script can open as many sessions as it likes."""
        return client_address(request) if MAX_WAITING_PER_CLIENT > 0 else session_hash

    def predict_batch(self, paths: list[str] | None, request: gr.Request):
        self.batches.started(self.batch_owner(request, request.session_hash))
        self.clients.started(client_address(request))
        try:
            if message := self.batch_size_problem(paths):
                raise user_error(message)
            results = predict_files(self.classifier, [(_upload_name(p), p) for p in paths],
                                    time_budget_s=BATCH_TIME_BUDGET_S)
        finally:
            client = client_address(request)
            for path in paths or ():
                self.uploads.discard(path, client)
        rows = [[r.file, r.pneumonia_probability, batch_decision(r), plain(r.error or r.message) or ""] for r in results]
        csv_path = write_csv(results, Path(tempfile.mkdtemp(dir=UPLOAD_DIR, prefix=CSV_PREFIX)) / "pneumonia_predictions.csv")
        return rows, str(csv_path)


def build_demo(classifier: PneumoniaClassifier, model_name: str, examples: list[str] | None = None,
               uploads: UploadFolder | None = None) -> gr.Blocks:
    """The whole UI and API around one loaded classifier (the tests launch it with a tiny model)."""
    uploads = uploads or UploadFolder(UPLOAD_DIR)
    handlers = Handlers(classifier, model_name, uploads)

    with gr.Blocks(title="Pneumonia on chest X-rays") as demo:
        gr.Markdown("# Pneumonia on paediatric chest X-rays\n" + DISCLAIMER, elem_id="header")
        if classifier.missing_gate_warning():  # a model folder trained without the gate: say so where people look
            gr.Markdown("⚠ **This model has no learned check for images it must not answer**: lateral views, other "
                        "body parts and adults' films can get a NORMAL/PNEUMONIA answer. Upload frontal chest X-rays of "
                        "children only.", elem_id="missing-gate")
        with gr.Tab("Single X-ray"):
            with gr.Row(equal_height=True):
                with gr.Column(elem_id="upload-column"):
                    # No file_types filter: DICOM often has no extension; the reader explains anything it cannot use.
                    upload = with_local_api_example(gr.File(label=f"Chest X-ray (PNG, JPEG, TIFF, BMP, WebP or DICOM; up to {MAX_FILE_SIZE_MB} MB)", type="filepath",
                                                             elem_id="xray-upload"))
                    gr.Markdown("Upload a frontal chest X-ray of a child, the whole film as exported rather than a crop of it "
                                "(a tighter framing makes a false PNEUMONIA more likely): the answer appears as soon as the file arrives.",
                                elem_id="upload-hint")
                    preview = gr.Image(label="Your upload", type="pil", format="jpeg", height=IMAGE_HEIGHT, interactive=False,
                                       buttons=["fullscreen"], visible=False, elem_id="upload-preview")
                with gr.Column(elem_id="result-column"):
                    decision = gr.Markdown(WAITING_TEXT, label="Decision", elem_id="decision")
                    # No heading: the top bar is the argmax, but the decision is made at the stored threshold.
                    confidences = gr.Label(num_top_classes=2, label="Calibrated probabilities", show_heading=False,
                                           visible=False, elem_id="confidences")
                    heatmap = gr.Image(label="Grad-CAM heatmap", show_label=False, type="numpy", format="jpeg",
                                       height=IMAGE_HEIGHT, interactive=False, visible=False, buttons=["fullscreen"],
                                       elem_id="heatmap")
                    legend = gr.HTML(heatmap_legend_html(), visible=False)
            if examples:
                gr.Examples(examples=[[path, path] for path in examples], inputs=[upload, preview],
                            label="Example X-rays (not used in training)", examples_per_page=8,
                            api_visibility="private")  # the page's own: no API endpoint
            with gr.Accordion("JSON (as returned by the /predict API)", open=False):
                answer = gr.JSON(label="Prediction")
            # The page's event and its API twins share one worker (SINGLE_XRAY): each holds at most one decoded upload,
            # so four requests of the worst admissible file at once cannot hold four of them in memory.
            upload.change(handlers.show_upload, upload, [preview, confidences, decision, heatmap, legend, answer],
                          api_visibility="private", show_progress="minimal", validator=handlers.admit_single,
                          concurrency_id=SINGLE_XRAY)
            # API-only twins of the page: one file in, the answer out.
            predict_trigger = gr.Button(visible=False)
            predict_trigger.click(handlers.predict, upload, answer, api_name="predict", validator=handlers.admit_single,
                                  concurrency_id=SINGLE_XRAY, api_description=PREDICT_DESCRIPTION)
            analyse_trigger = gr.Button(visible=False)
            analyse_trigger.click(handlers.analyse, upload, [confidences, decision, heatmap, answer], api_name="analyse",
                                  validator=handlers.admit_single, concurrency_id=SINGLE_XRAY,
                                  api_description=ANALYSE_DESCRIPTION)
        with gr.Tab("Batch"):
            batch_upload = with_local_api_example(gr.File(label=f"Up to {MAX_BATCH_FILES} X-rays ({MAX_FILE_SIZE_MB} MB each)", file_count="multiple",
                                                          type="filepath", elem_id="batch-upload"))
            batch_button = gr.Button("Analyse all", variant="primary", elem_id="analyse-all")
            table = gr.Dataframe(headers=BATCH_HEADERS, label="Results", interactive=False, wrap=True,
                                 column_widths=["28%", "16%", "18%", "38%"],
                                 elem_id="batch-results")
            csv_file = gr.File(label="CSV download", elem_id="batch-csv")
            gr.Markdown(f"The CSV is kept for {CSV_LIFETIME_S // 60} minutes after the batch is answered, then deleted.",
                        elem_id="csv-lifetime")
            batch_button.click(handlers.predict_batch, batch_upload, [table, csv_file], api_name="predict_batch",
                               validator=handlers.admit_batch, api_description=BATCH_DESCRIPTION)
            # In the browser alone: nothing for the server to prepare, and no event for a script to queue.
            batch_upload.change(None, batch_upload, [table, csv_file], js=BATCH_LIST_JS, api_visibility="private")
        with gr.Tab("About & API"):
            gr.Markdown(about_markdown(classifier, model_name))
        gr.Markdown(f"Model: {card_link(classifier, model_name)}. From code: the About & API tab (on a wide screen, also “Use via API” at the foot of the page).",
                    elem_id="footer-note")
    handlers.demo = demo
    uploads.protected = {path for block in demo.blocks.values() for path in getattr(block, "keep_in_cache", set())}
    demo.uploads = uploads  # the HTTP guard reports stored uploads to it (see `serve`)
    return demo


def batch_decision(result) -> str:
    if result.error:
        return "not analysed"
    if result.decision and result.gate == OUTSIDE_POPULATION:
        return f"{result.decision} (not validated)"  # the note says why; the CSV keeps the plain decision and the gate
    return result.decision or "no decision"


def card_url(classifier: PneumoniaClassifier, model_name: str) -> str | None:
    """The model card on the Hub for a Hub model, in the Space's files on a Space; None for a local folder."""
    if model_name.count("/") == 1 and not Path(model_name).exists():
        return f"https://huggingface.co/{model_name}"
    if os.environ.get("SPACE_ID"):
        try:
            folder = Path(classifier.source).resolve().relative_to(Path(__file__).resolve().parent)
        except ValueError:
            return None
        return f"https://huggingface.co/spaces/{os.environ['SPACE_ID']}/blob/main/{folder.as_posix()}/README.md"
    return None


def card_link(classifier: PneumoniaClassifier, model_name: str) -> str:
    url = card_url(classifier, model_name)
    return f"[the model card]({url})" if url else f"the model card (`{Path(classifier.source).name}/README.md`)"


def measured_figures(classifier: PneumoniaClassifier) -> str:
    """The model's own validation figures, from the metrics file next to its weights."""
    path = Path(classifier.source) / "metrics_validation.json"
    if not path.is_file():
        return "No measured figures ship with this model folder."
    report = json.loads(path.read_text())
    m = report["metrics"]
    auc = f"{m['roc_auc']:.3f}" if m.get("roc_auc") is not None else "n/a"
    return (f"On {m['normal_count'] + m['pneumonia_count']} validation X-rays ({plain(report['dataset'])}): ROC-AUC **{auc}**, "
            f"sensitivity **{m['sensitivity']:.3f}**, specificity **{m['specificity']:.3f}**, calibration error (ECE) "
            f"**{m['ece']:.3f}** at the threshold {m['threshold']:.3f}. These images come from the training hospital: "
            "expect lower figures elsewhere (the official test split, from the same hospital, is harder).")


def about_markdown(classifier: PneumoniaClassifier, model_name: str) -> str:
    config = classifier.config
    return f"""
**Model**: `{model_name}` ({config.model_type}, {classifier.image_size}×{classifier.image_size} input, running on {classifier.runtime}).
Decision threshold **{classifier.threshold:.3f}**, from the model's `config.json`, chosen on patient-level validation data;
the probabilities are calibrated on the same data. Details are in {card_link(classifier, model_name)}.

**Measured**: {measured_figures(classifier)}

**Limitations**: trained on one hospital's frontal X-rays of children aged 1–5 (Kermany et al., 2018). Not validated on
adults, other hospitals or machines, lateral views or other body parts; images that do not look like a frontal chest
X-ray get no decision, and adults get a warning. It does not tell bacterial from viral pneumonia or find other diseases.
The heatmap shows what drove the score, which may be a shortcut rather than disease.

**Call it from Python** with `gradio_client`:

```python
from gradio_client import Client, handle_file

client = Client({json.dumps(client_target())}){"" if os.environ.get("SPACE_ID") else '  # or the Space id, e.g. "user/space"'}
client.predict(handle_file("xray.jpeg"), api_name="/predict")   # JSON: decision (null when refused), probability, message
probabilities, decision_text, heatmap_jpeg, answer = client.predict(handle_file("scan.dcm"), api_name="/analyse")
table, csv_path = client.predict([handle_file("a.png"), handle_file("b.dcm")], api_name="/predict_batch")
```

`/analyse` returns the page's answer: the calibrated probabilities (empty when refused), the decision in words
(Markdown), the heatmap as a JPEG file path (`null` when refused) and the same JSON as `/predict`.
"""


def local_examples(folder: str, per_class: int = 2, prefer_listed_in: Path | None = None) -> list[str]:
    """A few images per class from EXAMPLES_DIR, preferring those the model was not trained on (listed in its
    `splits/validation.csv`), copied into the temporary area Gradio serves from."""
    files = expand_paths([folder])
    if prefer_listed_in is not None and prefer_listed_in.is_file():
        held_out = read_split_list(prefer_listed_in)
        files = [f for f in files if f.name in held_out] or files
    picked: list[Path] = []
    for label in ("NORMAL", "PNEUMONIA"):
        picked += [f for f in files if f.parent.name.upper() == label][:per_class]
    picked = picked or files[: 2 * per_class]
    target = Path(tempfile.mkdtemp(dir=UPLOAD_DIR, prefix=EXAMPLES_PREFIX))
    return [str(shutil.copy(f, target / f"{f.parent.name.lower()}_{f.name}")) for f in picked]


def hub_examples(per_class: int = 2) -> list[str]:
    """On a Space: a few test images of the Hub dataset (never trained on), fetched once and cached; none if unreachable."""
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


def find_examples(classifier: PneumoniaClassifier | None = None) -> list[str]:
    """EXAMPLES_DIR (preferring the model's validation images when the classifier's folder lists them), or on a
    Space the Hub dataset's test split; none otherwise."""
    if os.environ.get("EXAMPLES_DIR"):
        held_out = Path(classifier.source) / "splits" / "validation.csv" if classifier is not None else None
        return local_examples(os.environ["EXAMPLES_DIR"], prefer_listed_in=held_out)
    if os.environ.get("SPACE_ID"):
        return hub_examples()
    return []


def client_target() -> str:
    """What `gradio_client.Client` needs to reach this app: the Space's id on a Space, else this server's address."""
    return os.environ.get("SPACE_ID") or f"http://127.0.0.1:{server_port()}/"


def server_port() -> int:
    return int(os.environ.get("GRADIO_SERVER_PORT") or os.environ.get("PORT") or 7860)


def server_name() -> str:
    """Loopback by default; all interfaces on a Space (SPACE_ID) or when GRADIO_SERVER_NAME asks for them."""
    return os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1")


def event_stream_waiting(demo: gr.Blocks, event_id: str) -> bool:
    """Whether `/call/NAME/EVENT_ID` has a stream to read: the event's session, found as Gradio finds it (the event,
    else the session still holding its id, else the id itself), must have messages waiting."""
    queue = demo._queue
    event = queue.event_ids_to_events.get(event_id)
    session = event.session_hash if event is not None else next(
        (s for s, ids in list(queue.pending_event_ids_session.items()) if event_id in ids), event_id)
    return session in queue.pending_messages_per_session


def upload_quota() -> UploadQuota | None:
    return UploadQuota(MAX_UPLOAD_MB_PER_CLIENT * 2**20, WAITING_UPLOAD_LIFETIME_S) if MAX_UPLOAD_MB_PER_CLIENT > 0 else None


def serve(demo: gr.Blocks, host: str, port: int, quiet: bool = False):
    """Launch with every limit of the public Space; the tests launch through here too."""
    demo.queue(default_concurrency_limit=1, max_size=64, api_open=False)  # no REST route around the queue
    return demo.launch(
        server_name=host,
        server_port=port,
        max_file_size=MAX_FILE_SIZE,
        theme=PAGE_THEME,
        css=PAGE_CSS,
        js=PAGE_JS,
        footer_links=["api"],
        run_history=False,
        enable_monitoring=False,
        state_session_capacity=1000,  # the app keeps no state: ~50 kB of Gradio's own per session, at most 50 MB
        app_kwargs={"middleware": [Middleware(HttpGuard, max_upload_parts=MAX_BATCH_FILES, on_uploaded=demo.uploads.register,
                                              endpoint_inputs=lambda: {i: fn.inputs for i, fn in demo.fns.items() if fn.fn is not None},
                                              api_inputs=lambda: {fn.api_name: fn.inputs for fn in demo.fns.values()
                                                                  if fn.api_name and fn.api_visibility != "private"},
                                              file_allowed=demo.uploads.holds,
                                              direct_fns=lambda: {i: fn.inputs for i, fn in demo.fns.items() if fn.fn and not fn.queue},
                                              known_session=lambda session: session in demo._queue.pending_messages_per_session,
                                              known_event=lambda event_id: event_stream_waiting(demo, event_id),
                                              known_component=lambda component: component in demo.blocks,
                                              api_parameters=lambda: {name.lstrip("/"): info["parameters"] for name, info
                                                                      in demo.get_api_info()["named_endpoints"].items()},
                                              free_disk_bytes=lambda: shutil.disk_usage(UPLOAD_DIR).free,
                                              upload_quota=upload_quota(), client_of=lambda scope: client_address(Request(scope)))]},
        prevent_thread_lock=True,
        quiet=quiet,
    )


def stop_on_sigterm() -> None:
    """Docker, systemd and Spaces stop a container with SIGTERM: leave the way Ctrl-C does, cleanup included."""

    def interrupt(_signal, _frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one shutdown at a time (a supervisor may repeat the signal)
        shutil.rmtree(UPLOAD_DIR, ignore_errors=True)  # first, in case the server's shutdown hangs
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def return_freed_memory_to_the_system() -> None:
    """glibc raises its mmap threshold after each large free, so the next big upload's pixels come from a heap that
    never shrinks: the server stayed at 1.9 GB after a few worst-case files. Fixing the threshold at 1 MB keeps every
    decoded image in its own mapping, handed back when it is freed. Elsewhere than glibc: nothing to do."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return_freed_memory_to_the_system()
    stop_on_sigterm()
    remove_stale_folders()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    model_id = os.environ.get("MODEL_ID", DEFAULT_MODEL)
    try:
        classifier = PneumoniaClassifier.from_pretrained(model_id, revision=os.environ.get("MODEL_REVISION"))
    except ModelLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    if classifier.missing_gate_warning():
        logger.warning(classifier.missing_gate_warning())
    classifier.predict([Image.new("L", (classifier.image_size, classifier.image_size), 128)])  # warm-up
    model_name = "bundled model" if model_id == DEFAULT_MODEL else model_id
    uploads = UploadFolder(UPLOAD_DIR)
    demo = build_demo(classifier, model_name, find_examples(classifier), uploads)
    serve(demo, server_name(), server_port())
    uploads.start_purging()
    # Predictions are served from here on; the PyTorch model that Grad-CAM needs loads meanwhile
    # (a heatmap requested before it is ready waits for it).
    threading.Thread(target=classifier.load_model, name="load-pytorch-model", daemon=True).start()
    demo.block_thread()


if __name__ == "__main__":
    main()
