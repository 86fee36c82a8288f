"""The app as a developer uses it: a launched server called through `gradio_client`."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageOps

import app
from conftest import PATIENT_ID, PATIENT_NAME, synthetic_xray, xray_as_dicom


@pytest.fixture(scope="module")
def server(app_server):
    return app_server


@pytest.fixture(scope="module")
def client(app_client):
    return app_client


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uploads")
    # Full 0-255 range, so the 16-bit copy (stretched to its own range by the reader) is the same picture.
    xray = ImageOps.autocontrast(synthetic_xray(1, 77, size=96))
    files = {
        "png": folder / "chest.png",
        "jpeg": folder / "chest.jpeg",
        "png16": folder / "chest16.png",
        "dicom": folder / "chest.dcm",
        "dicom_no_extension": folder / "IMG00042",
        "rectangular": folder / "wide.png",
    }
    xray.save(files["png"])
    xray.convert("RGB").save(files["jpeg"], quality=90)
    Image.fromarray(np.asarray(xray, dtype=np.uint16) * 257).save(files["png16"])
    xray_as_dicom(files["dicom"])
    xray_as_dicom(files["dicom_no_extension"])
    xray.resize((300, 200)).save(files["rectangular"])
    bad = {
        "text": (folder / "notes.png", b"this is a text file renamed to png"),
        "empty": (folder / "empty.png", b""),
        "truncated": (folder / "cut.jpeg", files["jpeg"].read_bytes()[:300]),
        "bomb": (folder / "bomb.png", None),
        "gif": (folder / "anim.gif", None),
        "dicom_no_pixels": (folder / "nopix.dcm", None),
    }
    for key, (path, data) in bad.items():
        if data is not None:
            path.write_bytes(data)
    Image.new("1", (9000, 9000)).save(bad["bomb"][0])
    frames = [synthetic_xray(0, i, size=32).convert("P") for i in range(3)]
    frames[0].save(bad["gif"][0], save_all=True, append_images=frames[1:])
    xray_as_dicom(bad["dicom_no_pixels"][0], with_pixels=False)
    return files, {key: path for key, (path, _) in bad.items()}


@pytest.mark.parametrize("kind", ["png", "jpeg", "png16", "dicom", "dicom_no_extension"])
def test_predict_returns_a_calibrated_decision(client, server, uploads, kind):
    result = client.predict(handle_file(str(uploads[0][kind])), api_name="/predict")
    classifier = server[1]
    assert result["decision"] in ("NORMAL", "PNEUMONIA")
    assert result["threshold"] == pytest.approx(classifier.threshold, abs=1e-4)
    assert (result["decision"] == "PNEUMONIA") == (result["pneumonia_probability"] >= result["threshold"])
    assert sum(result["confidences"].values()) == pytest.approx(1.0, abs=1e-3)
    assert "not a medical device" in result["disclaimer"]


def test_same_image_gives_the_same_answer_in_every_format(client, uploads):
    probabilities = [client.predict(handle_file(str(uploads[0][k])), api_name="/predict")["pneumonia_probability"]
                     for k in ("png", "png16")]
    assert probabilities[0] == pytest.approx(probabilities[1], abs=0.02)


def test_dicom_patient_data_appears_in_no_output(client, uploads):
    answer = client.predict(handle_file(str(uploads[0]["dicom"])), api_name="/analyse")
    text = json.dumps(answer[0]) + answer[1] + json.dumps(answer[3])
    assert PATIENT_NAME not in text and "DOE" not in text and PATIENT_ID not in text
    heatmap = Image.open(answer[2])
    assert "DOE" not in json.dumps({k: str(v) for k, v in heatmap.info.items()})


def test_analyse_gives_label_words_and_a_heatmap_of_the_input_size(client, uploads):
    confidences, words, heatmap_path, answer = client.predict(handle_file(str(uploads[0]["rectangular"])), api_name="/analyse")
    assert {c["label"] for c in confidences["confidences"]} == {"NORMAL", "PNEUMONIA"}
    assert f"Decision: **{answer['decision']}**" in words
    assert "threshold" in words and "not a medical device" in answer["disclaimer"]
    heatmap = Image.open(heatmap_path)
    assert heatmap.size == (300, 200) and heatmap.mode == "RGB" and heatmap.format == "JPEG"


def test_heatmap_display_size_is_bounded_whatever_the_upload_size(client, tmp_path):
    big = tmp_path / "big.png"
    ImageOps.autocontrast(synthetic_xray(1, 5, size=96)).resize((1800, 1500)).save(big)
    heatmap = Image.open(client.predict(handle_file(str(big)), api_name="/analyse")[2])
    assert max(heatmap.size) == 512 and heatmap.size[0] > heatmap.size[1]


@pytest.mark.parametrize("kind, message", [
    ("text", "is not an image"), ("empty", "is empty"), ("truncated", "truncated or corrupt"),
    ("bomb", "more than the limit"), ("gif", "frames"), ("dicom_no_pixels", "without an image"),
])
def test_bad_input_gets_a_clear_message_and_the_app_keeps_serving(client, uploads, kind, message):
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(uploads[1][kind])), api_name="/predict")
    assert client.predict(handle_file(str(uploads[0]["png"])), api_name="/predict")["decision"] in ("NORMAL", "PNEUMONIA")


def test_batch_table_and_csv_agree_with_single_predictions(client, uploads):
    good, bad = uploads[0], uploads[1]
    files = [good["png"], bad["text"], good["dicom"]]
    table, csv_path = client.predict([handle_file(str(f)) for f in files], api_name="/predict_batch")
    rows = list(csv.DictReader(io.StringIO(open(csv_path).read())))
    assert [r["file"] for r in rows] == ["chest.png", "notes.png", "chest.dcm"]
    assert "is not an image" in rows[1]["error"] and rows[1]["pneumonia_probability"] == ""
    for row, path in ((rows[0], good["png"]), (rows[2], good["dicom"])):
        single = client.predict(handle_file(str(path)), api_name="/predict")
        assert float(row["pneumonia_probability"]) == pytest.approx(single["pneumonia_probability"], abs=1e-4)
        assert row["decision"] == single["decision"]
    assert [r[0] for r in table["data"]] == ["chest.png", "notes.png", "chest.dcm"]
    assert PATIENT_NAME not in open(csv_path).read()


def test_what_is_not_a_chest_x_ray_gets_no_decision(client, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("L", (200, 200), 180).save(blank)
    photo = tmp_path / "photo.jpeg"
    rng = np.random.default_rng(0)
    colours = np.stack([np.full((120, 160), c) for c in (200, 60, 40)], -1) + rng.normal(0, 20, (120, 160, 3))
    Image.fromarray(colours.clip(0, 255).astype(np.uint8)).save(photo)
    noise = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 256, (200, 200), dtype=np.uint8)).save(noise)
    document = tmp_path / "letter.png"
    page = Image.new("L", (400, 500), 250)
    from PIL import ImageDraw

    for y in range(40, 460, 20):
        ImageDraw.Draw(page).text((30, y), "Dear colleague, please find the report attached " * 2, fill=10)
    page.save(document)
    for path, reason in ((blank, "blank"), (photo, "colour_photo"), (noise, "noise"), (document, "document")):
        answer = client.predict(handle_file(str(path)), api_name="/predict")
        assert answer["decision"] is None and answer["pneumonia_probability"] is None and answer["confidences"] is None
        assert answer["gate"] == "not_frontal_chest" and answer["gate_reason"] == reason and answer["message"]
        confidences, words, heatmap, full = client.predict(handle_file(str(path)), api_name="/analyse")
        assert heatmap is None and not confidences and "No decision" in words and "NORMAL" not in words and "PNEUMONIA" not in words


def test_named_endpoints_are_documented_with_named_outputs(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/predict", "/analyse", "/predict_batch"} == set(endpoints)  # the page's own events stay private
    outputs = [item["label"] for item in endpoints["/analyse"]["returns"]]
    assert outputs == ["Calibrated probabilities", "Decision", "Grad-CAM heatmap", "Prediction"]


def test_batch_rows_say_what_happened_in_plain_text(client, uploads):
    table, _ = client.predict([handle_file(str(uploads[1]["text"]))], api_name="/predict_batch")
    file, probability, decision, note = table["data"][0]
    assert decision == "not analysed" and probability is None
    assert "is not an image" in note and "`" not in note


def test_missing_model_is_one_clear_line(tmp_path):
    import subprocess, sys, os

    env = {**os.environ, "MODEL_ID": str(tmp_path / "no-such-model"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "app.py"], env=env, capture_output=True, text=True, timeout=120,
                            cwd=app.Path(app.__file__).parent)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "neither a model folder nor a Hub repo id" in result.stderr


def test_an_adult_s_answer_is_marked_not_validated_on_the_page_and_in_the_batch_table():
    """The decision stands (issue 12), but nothing vouches for it: the headline and the table say so, the CSV keeps
    the plain decision beside its gate."""
    from types import SimpleNamespace

    from chestxray.batch import FileResult
    from chestxray.ood import FRONTAL_CHEST, MESSAGES, OUTSIDE_POPULATION

    adult = FileResult("adult.png", 0.97, "PNEUMONIA", 0.5, OUTSIDE_POPULATION, "adult", MESSAGES["adult"])
    assert app.batch_decision(adult) == "PNEUMONIA (not validated)"
    assert app.batch_decision(FileResult("child.png", 0.1, "NORMAL", 0.5, FRONTAL_CHEST)) == "NORMAL"
    page = app.decision_markdown(SimpleNamespace(decision="PNEUMONIA", pneumonia_probability=0.97, threshold=0.5,
                                                 gate=OUTSIDE_POPULATION, message=MESSAGES["adult"]))
    assert "PNEUMONIA (not validated for this patient)" in page and "do not rely on this result" in page
    assert "calibrated on children's X-rays" in page


def test_a_second_run_of_the_page_s_event_for_a_file_it_was_answered_about_keeps_that_answer(trained_model, tmp_path):
    """Gradio can run the change event again for the same file after it was answered (and deleted): the page keeps
    its answer instead of showing "does not exist". Another page naming the same missing file still gets the error."""
    from types import SimpleNamespace

    import gradio as gr

    from chestxray import PneumoniaClassifier

    handlers = app.Handlers(PneumoniaClassifier.from_pretrained(trained_model), "tiny", app.UploadFolder(str(tmp_path)))
    film = tmp_path / "content-hash" / "film.png"
    film.parent.mkdir()
    synthetic_xray(1, 3).save(film)
    page = lambda session: SimpleNamespace(headers={}, client=SimpleNamespace(host="127.0.0.1"), session_hash=session)  # noqa: E731
    first = handlers.show_upload(str(film), page("page-1"))
    assert "Decision:" in first[2] and not film.exists()  # answered, and the upload deleted
    assert handlers.show_upload(str(film), page("page-1")) == (gr.skip(),) * 6
    assert "does not exist" in handlers.show_upload(str(film), page("page-2"))[2]
    expiring = app.RecentAnswers(lifetime_s=0.0)
    expiring.add("page-1", str(film))
    assert not expiring.holds("page-1", str(film))
