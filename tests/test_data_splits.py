"""Patient grouping, duplicate handling and label normalisation of the data layer."""

from __future__ import annotations

import shutil

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image as ImageFeature

from conftest import synthetic_xray, write_image_folder
from chestxray.batch import read_split_list
from train.data import carve_validation, image_name, load_raw_dataset, patient_id, split_membership, write_split_lists


@pytest.mark.parametrize(
    "file_name, expected",
    [
        ("person123_bacteria_456.jpeg", "person123"),
        ("person1000_virus_1681.jpeg", "person1000"),
        ("IM-0123-0001.jpeg", "im-0123"),
        ("NORMAL2-IM-0123-0001.jpeg", "normal2-im-0123"),
        ("scan_from_elsewhere.png", None),
    ],
)
def test_patient_id_from_kermany_file_names(file_name, expected):
    assert patient_id(file_name) == expected


def test_two_series_with_the_same_number_are_different_patients():
    assert patient_id("IM-0123-0001.jpeg") != patient_id("NORMAL2-IM-0123-0001.jpeg")


def sides(train, validation) -> tuple[set, set]:
    names = lambda ds: {image_name(cell) for cell in ds["image"]}
    return names(train), names(validation)


def test_carved_validation_is_grouped_stratified_and_seeded(tmp_path):
    root = write_image_folder(tmp_path / "data", {"train": 20}, images_per_patient=3)
    dataset = load_raw_dataset(None, str(root))["train"]
    train, validation, grouped = carve_validation(dataset, 0.2, seed=7)
    assert grouped
    train_names, validation_names = sides(train, validation)
    assert {patient_id(n) for n in train_names}.isdisjoint({patient_id(n) for n in validation_names})
    assert len(train) + len(validation) == len(dataset)
    assert set(validation["label"]) == {0, 1}  # both classes on the validation side
    again_train, again_validation, _ = carve_validation(dataset, 0.2, seed=7)
    assert sides(again_train, again_validation) == (train_names, validation_names)
    other_train, other_validation, _ = carve_validation(dataset, 0.2, seed=8)
    assert sides(other_train, other_validation) != (train_names, validation_names)


def test_a_split_seed_keeps_the_split_while_the_training_seed_changes(tmp_path):
    from train.arguments import DataArguments
    from train.data import prepare_splits

    root = write_image_folder(tmp_path / "data", {"train": 20}, images_per_patient=2)
    raw = load_raw_dataset(None, str(root))
    split = lambda seed, **kw: sides(*(prepare_splits(raw, DataArguments(data_dir=str(root), **kw), seed).splits[name]
                                       for name in ("train", "validation")))
    assert split(1, split_seed=5) == split(2, split_seed=5)  # another start, the same films on each side
    assert split(1) != split(2)  # without it, the training seed carves the split


def test_byte_identical_copies_of_different_patients_stay_together(tmp_path):
    root = write_image_folder(tmp_path / "data", {"train": 12}, images_per_patient=1)
    folder = root / "train" / "PNEUMONIA"
    originals = sorted(folder.iterdir())
    for index, original in enumerate(originals[:6]):  # same bytes filed under another patient id
        shutil.copy(original, folder / f"person{900 + index}_virus_1.jpeg")
    dataset = load_raw_dataset(None, str(root))["train"]
    for seed in range(5):
        train_names, validation_names = sides(*carve_validation(dataset, 0.25, seed)[:2])
        for index, original in enumerate(originals[:6]):
            copy = f"person{900 + index}_virus_1.jpeg"
            assert (original.name in train_names) == (copy in train_names)


def test_names_without_patient_ids_fall_back_to_images_with_a_warning(tmp_path, caplog):
    images = [synthetic_xray(i % 2, i) for i in range(20)]
    folder = tmp_path / "plain"
    for i, image in enumerate(images):
        target = folder / "train" / ("PNEUMONIA" if i % 2 else "NORMAL")
        target.mkdir(parents=True, exist_ok=True)
        image.save(target / f"scan{i}.png")
    dataset = load_raw_dataset(None, str(folder))["train"]
    train, validation, grouped = carve_validation(dataset, 0.2, seed=0)
    assert not grouped
    assert len(validation) > 0
    assert "validation split is drawn per image" in caplog.text


def test_hub_style_parquet_labels_are_normalised_whatever_their_case_and_order(tmp_path):
    images = [synthetic_xray(i % 2, i) for i in range(6)]
    # Class order and spelling differ from ours: 0 = "pneumonia", 1 = "Normal".
    labels = [0 if i % 2 else 1 for i in range(6)]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["pneumonia", "Normal"])})
    hub_like = DatasetDict({"train": Dataset.from_dict({"image": images, "label": labels}, features=features)})
    (tmp_path / "repo" / "data").mkdir(parents=True)
    hub_like["train"].to_parquet(str(tmp_path / "repo" / "data" / "train-00000-of-00001.parquet"))
    loaded = load_raw_dataset(str(tmp_path / "repo"), None)["train"]
    assert loaded.features["label"].names == ["NORMAL", "PNEUMONIA"]
    assert loaded["label"] == [i % 2 for i in range(6)]  # pneumonia images (odd i) are now label 1


def test_a_dataset_with_other_classes_is_refused(tmp_path):
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["cat", "dog"])})
    dataset = Dataset.from_dict({"image": [synthetic_xray(0, 1)], "label": [0]}, features=features)
    (tmp_path / "repo" / "data").mkdir(parents=True)
    dataset.to_parquet(str(tmp_path / "repo" / "data" / "train-00000-of-00001.parquet"))
    with pytest.raises(ValueError, match="NORMAL and PNEUMONIA"):
        load_raw_dataset(str(tmp_path / "repo"), None)


def test_a_split_list_round_trips_file_names_that_hold_commas_or_quotes(tmp_path):
    """The split lists are real CSV: a user's "scan, left.png" must come back as itself, or the model's own
    hold-out (reloaded by train.calibrate, train.shifts and the app's examples) would silently lose it."""
    root = write_image_folder(tmp_path / "data", {"train": 4}, images_per_patient=1)
    for index, image in enumerate(sorted((root / "train" / "NORMAL").iterdir())[:2]):
        image.rename(image.with_name(['scan, left.jpeg', 'film "2".jpeg'][index]))
    dataset = load_raw_dataset(None, str(root))["train"]
    write_split_lists(DatasetDict({"validation": dataset}), tmp_path / "splits")
    listed = read_split_list(tmp_path / "splits" / "validation.csv")
    assert {"scan, left.jpeg", 'film "2".jpeg'} <= set(listed) and listed["scan, left.jpeg"] == "NORMAL"
    inside, outside = split_membership(dataset, tmp_path / "splits" / "validation.csv")
    assert len(inside) == len(dataset) and len(outside) == 0
