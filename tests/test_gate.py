"""Know when not to answer: the gate in front of every decision (chestxray.ood, fitted by train.gate).

An image that is not a frontal chest X-ray gets no decision and no probability, only a sentence saying what it
looks like; an adult's film gets the decision with a warning. The real-data tests (skipped without
../shared/data) measure the bundled model's gate on the held-out part of each development folder and on the
paediatric validation split, which nothing of the gate was fitted or tuned on.
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from chestxray import PneumoniaClassifier, read_image
from chestxray.batch import predict_files, write_csv
from chestxray.ood import (FRONTAL_CHEST, GATE_CONFIG_FILE, GATE_FILE, MESSAGES, NOT_FRONTAL_CHEST, OUTSIDE_POPULATION,
                           image_descriptor, judge_images)
from train.card import rate_interval
from conftest import REAL_DATA, requires_real_data, synthetic_xray, write_image_folder, xray_as_dicom

BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "model"
OOD_DATA = REAL_DATA.parent
# Share of the held-out images that must get the right outcome (no decision; for adults, flagged either way), a
# little below what the bundled gate measured (model/ood_gate.json "measured": no decision for 9/10 lateral views,
# 7/9 CT slices, 11/11 hands, 12/12 knees; 107/120 adults flagged, 96 of them with the warning) so that the test
# means something without being flaky. CT falls short of the 95 % the issue asks for: this pins where we are.
MIN_FLAG_RATE = {"lateral_chest": 0.7, "ct_chest": 0.85, "hand": 0.9, "knee": 0.9, "adult": 0.8}
MIN_ADULT_WARNING_RATE = 0.65  # most adults' frontal films still get the decision, with the warning
VALIDATION_SAMPLE = 300
MAX_VALIDATION_FALSE_ALARMS = 0.02


@pytest.fixture(scope="module")
def tiny(trained_model):
    return PneumoniaClassifier.from_pretrained(trained_model)


def upload(image: Image.Image, name: str = "upload.png") -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return read_image(buffer.getvalue(), name=name)


def junk() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    page = Image.new("L", (400, 500), 250)
    for y in range(40, 460, 20):
        ImageDraw.Draw(page).text((30, y), "Dear colleague, please find the report attached " * 2, fill=10)
    colours = np.stack([np.full((120, 160), c) for c in (200, 60, 40)], -1) + rng.normal(0, 20, (120, 160, 3))
    return {
        "blank": Image.new("L", (200, 200), 180),
        "noise": Image.fromarray(rng.integers(0, 256, (200, 200), dtype=np.uint8)),
        "colour_photo": Image.fromarray(colours.clip(0, 255).astype(np.uint8)),
        "document": page,
    }


@pytest.mark.parametrize("reason", ["blank", "noise", "colour_photo", "document"])
def test_junk_gets_no_decision_and_no_probability(tiny, reason):
    prediction = tiny.predict([upload(junk()[reason])])[0]
    assert prediction.gate == NOT_FRONTAL_CHEST and prediction.gate_reason == reason
    assert prediction.decision is None and prediction.pneumonia_probability is None and prediction.probabilities == {}
    assert prediction.message == MESSAGES[reason] and "upload" in prediction.message


def test_a_chest_film_like_the_training_ones_is_answered(tiny):
    prediction = tiny.predict([upload(synthetic_xray(1, 5, size=64))])[0]
    assert prediction.gate == "frontal_chest" and prediction.decision in ("NORMAL", "PNEUMONIA")
    assert prediction.gate_reason is None and prediction.message is None and prediction.warning is None


@pytest.mark.parametrize("elements, reason", [
    ({"ViewPosition": "LL"}, "lateral_view"),
    ({"ViewPosition": "RL"}, "lateral_view"),
    ({"BodyPartExamined": "HAND"}, "other_body_part"),
    ({"BodyPartExamined": "SKULL"}, "other_body_part"),
])
def test_dicom_header_says_not_a_frontal_chest_x_ray(tiny, tmp_path, elements, reason):
    image = read_image(xray_as_dicom(tmp_path / "scan.dcm", **elements))
    prediction = tiny.predict([image])[0]
    assert (prediction.gate, prediction.gate_reason, prediction.decision) == (NOT_FRONTAL_CHEST, reason, None)


def test_dicom_of_a_frontal_chest_view_is_answered(tiny, tmp_path):
    image = read_image(xray_as_dicom(tmp_path / "scan.dcm", ViewPosition="PA", BodyPartExamined="CHEST", PatientAge="003Y"))
    assert tiny.predict([image])[0].gate == "frontal_chest"


@pytest.mark.parametrize("modality", ["CT", "MR", "US"])
def test_a_non_radiograph_modality_is_refused_whoever_built_the_image(modality):
    image = synthetic_xray(0, 1, size=64)
    image.info["dicom"] = {"modality": modality}
    outcome = judge_images([image], image_descriptor(image)[None], np.zeros((1, 4)), None, None)[0]
    assert (outcome.gate, outcome.reason) == (NOT_FRONTAL_CHEST, "not_radiograph")


def test_an_adult_by_age_gets_the_decision_with_the_warning(tiny, tmp_path):
    image = read_image(xray_as_dicom(tmp_path / "adult.dcm", PatientAge="045Y"))
    prediction = tiny.predict([image])[0]
    assert prediction.gate == OUTSIDE_POPULATION and prediction.gate_reason == "adult"
    assert prediction.decision in ("NORMAL", "PNEUMONIA") and 0 <= prediction.pneumonia_probability <= 1
    assert "children aged 1 to 5" in prediction.message and "45" not in prediction.message  # the age is never shown
    teenager = tiny.predict([read_image(xray_as_dicom(tmp_path / "teen.dcm", PatientAge="012Y"))])[0]
    assert (teenager.gate, teenager.gate_reason) == (OUTSIDE_POPULATION, "outside_validated_age")


def test_an_adult_looking_image_is_refused_once_it_also_looks_like_another_view():
    """Adults' lateral views look adult before they look lateral: among adult-looking images a lower not-frontal
    score already refuses; children's films are judged by the main threshold alone, and older gates (no such
    threshold) keep their old behaviour."""
    from chestxray.ood import Gaussian, LinearHead, OodGate

    width = 3  # input 0: the not-frontal score, input 1: the adult score, input 2: a dummy feature

    def reads(column):
        weight = np.zeros((1, width))
        weight[0, column] = 1.0
        return LinearHead(np.zeros(width), np.ones(width), weight, np.zeros(1))

    near = Gaussian(np.zeros(0), np.zeros((0, 0)))  # no descriptor: every image at distance 0
    thresholds = {"density": 1.0, "adult_density": 1.0, "not_frontal": 2.0, "adult": 0.0, "adult_not_frontal": -1.0}
    gate = OodGate(near, near, reads(0), reads(1), LinearHead(np.zeros(width), np.ones(width), np.zeros((1, width)), np.zeros(1)),
                   ["lateral_view"], thresholds, np.zeros(1), {})
    descriptors = np.zeros((4, 0))
    features = np.array([[0.0, 1.0, 0.0], [-2.0, 1.0, 0.0], [0.0, -1.0, 0.0], [3.0, -1.0, 0.0]])  # not-frontal, adult
    outcomes = gate.judge(descriptors, features)
    assert [o.gate for o in outcomes] == [NOT_FRONTAL_CHEST, OUTSIDE_POPULATION, FRONTAL_CHEST, NOT_FRONTAL_CHEST]
    older = OodGate(near, near, reads(0), reads(1), gate.reasons, gate.reason_codes,
                    {k: v for k, v in thresholds.items() if k != "adult_not_frontal"}, np.zeros(1), {})
    assert older.judge(descriptors, features)[0].gate == OUTSIDE_POPULATION


def test_a_refusal_names_a_kind_only_when_the_reason_head_is_sure_of_it():
    """A CT slice the not-frontal head refuses but the reason head half calls a side view gets the plain sentence."""
    from chestxray.ood import Gaussian, LinearHead, OodGate

    width = 3  # input 0: the not-frontal score; inputs 1 and 2: the two reasons' logits

    def head(weight):
        return LinearHead(np.zeros(width), np.ones(width), np.array(weight, dtype=float), np.zeros(len(weight)))

    near = Gaussian(np.zeros(0), np.zeros((0, 0)))
    thresholds = {"density": 1.0, "adult_density": -1.0, "not_frontal": 0.0, "adult": 10.0}
    gate = OodGate(near, near, head([[1, 0, 0]]), head([[0, 0, 0]]), head([[0, 1, 0], [0, 0, 1]]),
                   ["lateral_view", "not_radiograph"], thresholds, np.zeros(1), {})
    features = np.array([[1.0, 0.0, 3.0], [1.0, 0.2, 0.0]])  # sure (95 %), fairly sure (55 %)
    reasons = [outcome.reason for outcome in gate.judge(np.zeros((2, 0)), features)]
    assert reasons == ["not_radiograph", "lateral_view"]
    three = OodGate(near, near, head([[1, 0, 0]]), head([[0, 0, 0]]), head([[0, 1, 0], [0, 0, 1], [0, 0, 0]]),
                    ["lateral_view", "not_radiograph", "other_body_part"], thresholds, np.zeros(1), {})
    assert three.judge(np.zeros((1, 0)), np.array([[1.0, 0.5, 0.0]]))[0].reason == "unlike_training_xrays"  # 45 %


def test_batch_rows_and_csv_say_there_is_no_decision(tiny, tmp_path):
    chest, blank = tmp_path / "chest.png", tmp_path / "blank.png"
    synthetic_xray(1, 2, size=64).save(chest)
    junk()["blank"].save(blank)
    results = predict_files(tiny, [("chest.png", chest), ("blank.png", blank)])
    assert results[0].decision in ("NORMAL", "PNEUMONIA") and results[0].gate == "frontal_chest"
    assert (results[1].decision, results[1].pneumonia_probability, results[1].gate_reason) == (None, None, "blank")
    rows = list(csv.DictReader(write_csv(results, tmp_path / "out.csv").open()))
    assert rows[1]["decision"] == "" and rows[1]["pneumonia_probability"] == ""
    assert rows[1]["gate"] == NOT_FRONTAL_CHEST and rows[1]["message"] == MESSAGES["blank"]


def write_development_folders(root: Path) -> Path:
    """A miniature ../shared/data: hands (grey shapes), lateral views (films turned sideways), adults."""
    rng = np.random.default_rng(1)
    for kind, count in (("hand", 10), ("lateral_chest", 10)):
        folder = root / "ood" / kind
        folder.mkdir(parents=True)
        for i in range(count):
            if kind == "hand":
                image = Image.new("L", (80, 96), 10)
                for finger in range(5):
                    x = 10 + 14 * finger
                    ImageDraw.Draw(image).rectangle([x, int(rng.integers(5, 30)), x + 8, 70], fill=int(rng.integers(150, 230)))
            else:
                image = synthetic_xray(i % 2, 900 + i, size=64).rotate(90)
            image.save(folder / f"{kind}_{i:02d}.png")
    write_image_folder(root / "adult_tmp", {"train": 6}, seed=7)
    (root / "adult_tmp" / "train").rename(root / "adult_nih")
    return root


def test_a_rate_on_ten_images_is_shown_with_its_wilson_interval():
    """What the card says: 10 of 10 refused is consistent with a true rate of 72 %; 9 of 10 with 60 to 98 %."""
    assert rate_interval(1.0, 10)[0] == pytest.approx(10 / (10 + 1.959963984540054 ** 2)) == pytest.approx(0.722, abs=5e-4)
    assert rate_interval(0.9, 10) == pytest.approx([0.596, 0.982], abs=5e-4)
    assert rate_interval(0.0, 0) is None


def test_the_gate_is_fitted_into_an_existing_model_folder(trained_model, tiny_image_folder, tmp_path):
    import shutil

    from train.ood import main as ood_main

    model = tmp_path / "model"
    shutil.copytree(trained_model, model, ignore=shutil.ignore_patterns("checkpoint-*", "ood_gate*"))
    ood_dir = write_development_folders(tmp_path / "dev")
    assert ood_main(["--model_dir", str(model), "--data_dir", str(tiny_image_folder), "--ood_dir", str(ood_dir),
                     "--synthetic_per_kind", "4", "--films_per_transform", "6", "--augmented_copies_refused", "2",
                     "--folds", "3"]) == 0
    config = json.loads((model / GATE_CONFIG_FILE).read_text())
    split = json.loads((model / "ood_gate_splits.json").read_text())
    assert set(split["held_out"]) == {"hand", "lateral_chest", "adult"}
    assert not set(split["held_out"]["hand"]) & set(split["fitted"]["hand"])  # measured on what it never saw
    assert config["measured"]["hand"]["images"] == len(split["held_out"]["hand"])
    assert (model / GATE_FILE).is_file() and PneumoniaClassifier.from_pretrained(model).gate is not None
    card = (model / "README.md").read_text()  # re-rendered: the card describes the gate it now carries
    assert f"| hand | {len(split['held_out']['hand'])} |" in card and "refused rather than warned" in card
    hand = config["measured"]["hand"]
    low, high = rate_interval(hand["flagged"], hand["images"])
    assert low <= hand["flagged"] <= high
    assert f"{hand['flagged'] * 100:.1f} % ({low * 100:.1f}–{high * 100:.1f} %)" in card  # how far so few images can be trusted


def test_a_gate_for_a_batch_holdout_model_fits_on_its_train_split_and_counts_false_alarms_on_the_batch(
        trained_model, tiny_image_folder, tmp_path):
    """A model trained with --holdout_normal_batch: the gate never sees the held-out batch, and reports how often
    it flags those paediatric films (a new batch's false alarms, which carved validation cannot show)."""
    import shutil

    from train.ood import main as ood_main

    model = tmp_path / "model"
    shutil.copytree(trained_model, model, ignore=shutil.ignore_patterns("checkpoint-*", "ood_gate*"))
    header, *rows = (model / "splits" / "train.csv").read_text().splitlines()
    held = [row for row in rows if row.startswith("NORMAL2-")]
    (model / "splits" / "train.csv").write_text("\n".join([header, *(r for r in rows if r not in held)]) + "\n")
    (model / "splits" / "batch_holdout.csv").write_text("\n".join([header, *held]) + "\n")
    assert held
    assert ood_main(["--model_dir", str(model), "--data_dir", str(tiny_image_folder), "--ood_dir",
                     str(write_development_folders(tmp_path / "dev")), "--synthetic_per_kind", "2", "--films_per_transform", "2",
                     "--augmented_copies_refused", "1", "--folds", "2"]) == 0
    config = json.loads((model / GATE_CONFIG_FILE).read_text())
    assert config["fitted_on"]["paediatric"] == len(rows) - len(held)
    assert config["measured"]["paediatric_batch_holdout"]["images"] == len(held)
    assert config["measured"]["paediatric_validation"]["images"] == len((model / "splits" / "validation.csv").read_text().splitlines()) - 1


# --- the bundled model on real images ------------------------------------------------------------------------

requires_bundled_gate = pytest.mark.skipif(not (BUNDLED_MODEL / GATE_FILE).is_file(), reason="no bundled gate")


@pytest.fixture(scope="module")
def bundled():
    classifier = PneumoniaClassifier.from_pretrained(BUNDLED_MODEL)
    assert classifier.gate is not None, "the bundled gate does not match the bundled network: refit it (python -m train.ood)"
    return classifier


@requires_real_data
@requires_bundled_gate
@pytest.mark.parametrize("kind", sorted(MIN_FLAG_RATE))
def test_bundled_gate_on_held_out_images_of_each_kind(bundled, kind):
    files = json.loads((BUNDLED_MODEL / "ood_gate_splits.json").read_text())["held_out"][kind]
    predictions = bundled.predict([bundled.read(OOD_DATA / name) for name in files])
    if kind == "adult":
        rate = np.mean([p.gate != FRONTAL_CHEST for p in predictions])
        assert np.mean([p.gate == OUTSIDE_POPULATION for p in predictions]) >= MIN_ADULT_WARNING_RATE
    else:
        rate = np.mean([p.gate == NOT_FRONTAL_CHEST for p in predictions])
    assert rate >= MIN_FLAG_RATE[kind], (kind, rate, [p.gate_reason for p in predictions])
    refused = [p for p in predictions if p.gate == NOT_FRONTAL_CHEST]
    assert all(p.decision is None and p.pneumonia_probability is None for p in refused)


@requires_real_data
@requires_bundled_gate
def test_bundled_gate_rarely_flags_paediatric_validation_films(bundled):
    rows = (BUNDLED_MODEL / "splits" / "validation.csv").read_text().splitlines()[1:]
    sample = random.Random(1).sample([r.split(",") for r in rows], min(VALIDATION_SAMPLE, len(rows)))
    predictions = bundled.predict([bundled.read(REAL_DATA / "train" / label / name) for name, label in sample])
    flagged = [p.gate_reason for p in predictions if p.gate != "frontal_chest"]
    assert len(flagged) <= MAX_VALIDATION_FALSE_ALARMS * len(predictions), flagged
