"""Load the chest X-ray data with `datasets`, drop unreadable files, and split by patient.

Kermany file names carry patient ids, and one patient often has several images: a validation
split drawn image by image would put the same child on both sides and flatter every metric.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Image, load_dataset
from sklearn.model_selection import StratifiedGroupKFold

from chestxray.batch import read_split_list
from chestxray.classifier import NEGATIVE_LABEL, POSITIVE_LABEL
from chestxray.imaging import ImageReadError, read_image

logger = logging.getLogger(__name__)

LABEL_NAMES = [NEGATIVE_LABEL, POSITIVE_LABEL]
ID2LABEL = dict(enumerate(LABEL_NAMES))
LABEL2ID = {name: index for index, name in ID2LABEL.items()}

# Kermany's training NORMALs came in two batches, `IM-...` (597 images) and `NORMAL2-IM-...` (744): holding
# one out entirely is the nearest thing here to a new batch from another machine or site.
NORMAL_BATCH_PATTERNS = {"NORMAL2": re.compile(r"^NORMAL2-IM-", re.IGNORECASE), "IM": re.compile(r"^IM-", re.IGNORECASE)}
BATCH_HOLDOUT_SPLIT = "batch_holdout"

_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+", re.IGNORECASE),
    re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE),
)


@dataclass
class PreparedData:
    """The splits ready for training, and what was dropped on the way."""

    splits: DatasetDict
    skipped_files: dict[str, list[str]] = field(default_factory=dict)
    grouped_by_patient: bool = True

    @property
    def skipped_count(self) -> int:
        return sum(len(files) for files in self.skipped_files.values())


def load_raw_dataset(dataset_name: str | None, data_dir: str | None, revision: str | None = None) -> DatasetDict:
    """A Hub dataset id or a local image folder, with labels normalised to NORMAL=0, PNEUMONIA=1."""
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise FileNotFoundError(f"--data_dir {data_dir} does not exist.")
        raw = load_dataset("imagefolder", data_dir=data_dir)
    else:
        raw = load_dataset(dataset_name, revision=revision)
    return DatasetDict({split: normalise_labels(ds) for split, ds in raw.items()})


def normalise_labels(dataset: Dataset) -> Dataset:
    """Accept NORMAL/normal/Pneumonia... in any order and store the canonical ids; keep image bytes undecoded."""
    if "image" not in dataset.column_names or "label" not in dataset.column_names:
        raise ValueError(f"Expected columns `image` and `label`, found {dataset.column_names}.")
    label_feature = dataset.features["label"]
    if not isinstance(label_feature, ClassLabel):
        raise ValueError("The `label` column must be a ClassLabel (NORMAL / PNEUMONIA).")
    names = [name.upper() for name in label_feature.names]
    if sorted(names) != sorted(LABEL_NAMES):
        raise ValueError(f"Expected the classes NORMAL and PNEUMONIA, found {label_feature.names}.")
    remap = np.array([LABEL2ID[name] for name in names])
    dataset = dataset.cast_column("image", Image(decode=False))
    if not np.array_equal(remap, np.arange(len(remap))):
        dataset = dataset.map(lambda batch: {"label": remap[np.asarray(batch["label"])].tolist()}, batched=True)
    return dataset.cast_column("label", ClassLabel(names=LABEL_NAMES))


def image_name(image: dict) -> str:
    path = image.get("path")
    return Path(path).name if path else ""


def load_image(image: dict):
    """Decode a `datasets` image cell (path or bytes) with the same reader the app uses."""
    name = image_name(image) or "image"
    return read_image(image["bytes"] if image.get("bytes") else image["path"], name=name)


def drop_unreadable(dataset: Dataset, split: str) -> tuple[Dataset, list[str]]:
    """Decode every image once; a corrupt file is skipped and reported, never fatal."""

    def check(batch):
        readable = []
        for image in batch["image"]:
            try:
                load_image(image)
                readable.append(True)
            except ImageReadError:
                readable.append(False)
        return {"readable": readable}

    checked = dataset.map(check, batched=True, batch_size=256, desc=f"Checking {split} images")
    bad_rows = [i for i, ok in enumerate(checked["readable"]) if not ok]
    skipped = [image_name(dataset[i]["image"]) or f"row {i}" for i in bad_rows]
    for name in skipped:
        logger.warning("Skipping unreadable image in %s: %s", split, name)
    return checked.filter(lambda ok: ok, input_columns="readable").remove_columns("readable"), skipped


def patient_id(file_name: str) -> str | None:
    """`person123_bacteria_456.jpeg` -> `person123`; `NORMAL2-IM-0123-0001.jpeg` -> `NORMAL2-IM-0123`."""
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(file_name)
        if match:
            return match.group(1).lower()
    return None


def group_ids(dataset: Dataset) -> tuple[list[str], bool]:
    """One group per patient, merged with byte-identical copies; image-level when names carry no ids."""
    names = [image_name(image) for image in dataset["image"]]
    patients = [patient_id(name) for name in names]
    grouped = all(p is not None for p in patients)
    if not grouped:
        known = sum(p is not None for p in patients)
        logger.warning(
            "Only %d of %d file names carry a patient id: the validation split is drawn per image, so images "
            "of one patient may fall on both sides and validation metrics will be optimistic.",
            known,
            len(names),
        )
    groups = [p if p is not None else f"image-{i}" for i, p in enumerate(patients)]
    return _merge_duplicates(dataset, groups), grouped


def _merge_duplicates(dataset: Dataset, groups: list[str]) -> list[str]:
    """Union-find over groups that share a byte-identical image (~30 such sets in Kermany's train split)."""
    parent = {group: group for group in groups}

    def find(group: str) -> str:
        while parent[group] != group:
            parent[group] = parent[parent[group]]
            group = parent[group]
        return group

    owner_of_content: dict[str, str] = {}
    for group, image in zip(groups, dataset["image"]):
        content = image["bytes"] if image.get("bytes") else Path(image["path"]).read_bytes()
        owner = owner_of_content.setdefault(hashlib.sha1(content).hexdigest(), group)
        parent[find(group)] = find(owner)
    return [find(group) for group in groups]


def normal_batch(file_name: str) -> str | None:
    """`NORMAL2-IM-0123-0001.jpeg` -> `NORMAL2`; `IM-0115-0001.jpeg` -> `IM`; other names -> None."""
    return next((batch for batch, pattern in NORMAL_BATCH_PATTERNS.items() if pattern.match(file_name)), None)


def hold_out_normal_batch(dataset: Dataset, batch: str, pneumonia_fraction: float | None, seed: int) -> tuple[Dataset, Dataset]:
    """(the rest, the hold-out): every NORMAL patient of `batch`, and PNEUMONIA patients drawn at random (seeded)
    until they make `pneumonia_fraction` of the PNEUMONIA images, by default the share of NORMAL images held
    out, so that the training classes keep their balance. Whole patient groups move, never single images."""
    groups, _ = group_ids(dataset)
    labels = np.asarray(dataset["label"])
    names = [image_name(image) for image in dataset["image"]]
    in_batch = np.array([label == 0 and normal_batch(name) == batch for label, name in zip(labels, names)])
    if not in_batch.any():
        raise ValueError(f"--holdout_normal_batch {batch}: no NORMAL image is named like that batch "
                         f"({NORMAL_BATCH_PATTERNS[batch].pattern[1:]}...).")
    held = {group for group, inside in zip(groups, in_batch) if inside}
    share = in_batch.sum() / max(1, (labels == 0).sum()) if pneumonia_fraction is None else pneumonia_fraction
    images_of: dict[str, int] = {}
    for group, label in zip(groups, labels):
        if label == 1 and group not in held:
            images_of[group] = images_of.get(group, 0) + 1
    candidates = sorted(images_of)
    np.random.default_rng(seed).shuffle(candidates)
    target, taken = share * (labels == 1).sum(), 0
    for group in candidates:
        if taken >= target:
            break
        held.add(group)
        taken += images_of[group]
    inside = [group in held for group in groups]
    return (dataset.select([i for i, x in enumerate(inside) if not x]), dataset.select([i for i, x in enumerate(inside) if x]))


def batch_holdout_description(batch: str) -> str:
    return (f"every NORMAL patient of the `{NORMAL_BATCH_PATTERNS[batch].pattern[1:]}` batch and a matched share of PNEUMONIA "
            "patients, held out of training and validation (a new-batch check)")


def batch_holdout_summary(metrics: dict, batch: str) -> dict:
    """The training summary's entry: how the stored threshold does on a batch the model never saw."""
    return {"normal_batch": batch, "normal": metrics["normal_count"], "pneumonia": metrics["pneumonia_count"],
            "threshold": metrics["threshold"], "specificity": metrics["specificity"], "sensitivity": metrics["sensitivity"],
            "roc_auc": metrics["roc_auc"]}


def carve_validation(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset, bool]:
    """Stratified by label, grouped by patient, seeded: (train, validation, whether grouping was possible)."""
    groups, grouped = group_ids(dataset)
    labels = np.asarray(dataset["label"])
    n_splits = max(2, round(1 / fraction))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_rows, validation_rows = next(splitter.split(np.zeros(len(labels)), labels, groups))
    return dataset.select(train_rows), dataset.select(validation_rows), grouped


def prepare_splits(raw: DatasetDict, data_args, seed: int) -> PreparedData:
    """train / validation (carved by patient unless given) / test (if present), unreadable files removed."""
    seed = seed if data_args.split_seed is None else data_args.split_seed
    if data_args.train_split_name not in raw:
        raise ValueError(f"No `{data_args.train_split_name}` split; found {list(raw)}.")
    skipped: dict[str, list[str]] = {}
    train, skipped["train"] = drop_unreadable(raw[data_args.train_split_name], "train")
    holdout = None
    if data_args.holdout_normal_batch:
        train, holdout = hold_out_normal_batch(train, data_args.holdout_normal_batch,
                                               data_args.holdout_pneumonia_fraction, seed)
    if data_args.max_train_samples:
        train = train.shuffle(seed=seed).select(range(min(data_args.max_train_samples, len(train))))
    grouped = True
    if data_args.validation_split_name:
        validation, skipped["validation"] = drop_unreadable(raw[data_args.validation_split_name], "validation")
    else:
        if "validation" in raw:
            logger.info("Ignoring the dataset's own %d-image validation split: too small to select on.", len(raw["validation"]))
        train, validation, grouped = carve_validation(train, data_args.validation_fraction, seed)
    splits = {"train": train, "validation": validation}
    if holdout is not None:
        splits[BATCH_HOLDOUT_SPLIT] = holdout
    if data_args.test_split_name in raw:
        splits["test"], skipped["test"] = drop_unreadable(raw[data_args.test_split_name], "test")
    return PreparedData(DatasetDict(splits), {k: v for k, v in skipped.items() if v}, grouped)


def write_split_lists(splits: DatasetDict, folder: Path) -> None:
    """The exact files of every split, next to the weights, so a run can be audited and repeated."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, dataset in splits.items():
        with (folder / f"{split}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["file", "label"])
            writer.writerows([image_name(image), LABEL_NAMES[label]] for image, label in zip(dataset["image"], dataset["label"]))


def split_membership(dataset: Dataset, split_file: Path) -> tuple[Dataset, Dataset]:
    """(rows listed in a model's `splits/<split>.csv`, the other rows): the model's own hold-out, reloaded."""
    names = set(read_split_list(split_file))
    listed = [image_name(cell) in names for cell in dataset["image"]]
    return (dataset.select([i for i, inside in enumerate(listed) if inside]),
            dataset.select([i for i, inside in enumerate(listed) if not inside]))
