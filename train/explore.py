"""`python -m train.explore`: what is in a dataset before training on it: counts, sizes, a sample grid."""

from __future__ import annotations

import io
import json
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image
from transformers import HfArgumentParser

from chestxray.imaging import ImageReadError
from train import figures
from train.data import LABEL_NAMES, image_name, load_image, load_raw_dataset, patient_id


@dataclass
class ExploreArguments:
    data_dir: Optional[str] = field(default=None, metadata={"help": "Image folder DIR/<split>/{NORMAL,PNEUMONIA}."})
    dataset_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset id."})
    output_dir: str = field(default="explore", metadata={"help": "Where summary.json and the PNGs go."})
    samples_per_class: int = field(default=6, metadata={"help": "Images per class in the sample grid."})
    seed: int = field(default=0, metadata={"help": "Which samples are drawn."})

    def __post_init__(self) -> None:
        if (self.dataset_name is None) == (self.data_dir is None):
            raise ValueError("Give exactly one of --data_dir or --dataset_name.")


def image_size(cell: dict) -> tuple[int, int] | None:
    """Width and height from the header alone (no decode); None for an unreadable file."""
    try:
        with Image.open(io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"]) as image:
            return image.size
    except (OSError, ValueError):
        return None


def summarise_split(dataset) -> dict:
    labels = np.asarray(dataset["label"])
    cells = dataset["image"]
    sizes = [image_size(cell) for cell in cells]
    readable = np.array([s for s in sizes if s is not None]).reshape(-1, 2)
    patients = {patient_id(image_name(cell)) for cell in cells} - {None}
    stats = lambda column: {"min": int(column.min()), "median": float(np.median(column)), "max": int(column.max())} if len(column) else {}
    return {
        "images": int(len(labels)),
        "per_class": {name: int((labels == index).sum()) for index, name in enumerate(LABEL_NAMES)},
        "patients_from_file_names": len(patients),
        "unreadable_headers": int(sum(s is None for s in sizes)),
        "width": stats(readable[:, 0]),
        "height": stats(readable[:, 1]),
        "most_common_sizes": [[f"{w}x{h}", n] for (w, h), n in Counter(map(tuple, readable.tolist())).most_common(5)],
    }


def sample_grid(dataset, per_class: int, seed: int, path: Path) -> str:
    rng = random.Random(seed)
    labels = np.asarray(dataset["label"])
    fig, axes = figures.plt.subplots(len(LABEL_NAMES), per_class, figsize=(1.8 * per_class, 2.0 * len(LABEL_NAMES)), squeeze=False)
    for row, name in enumerate(LABEL_NAMES):
        rows = [int(i) for i in np.flatnonzero(labels == row)]
        for column, index in enumerate(rng.sample(rows, min(per_class, len(rows)))):
            cell = dataset[index]["image"]
            try:
                axes[row][column].imshow(load_image(cell), cmap="gray")
            except ImageReadError:
                axes[row][column].text(0.5, 0.5, "unreadable", ha="center")
            axes[row][column].set_title(image_name(cell)[:22], fontsize=6)
        axes[row][0].set_ylabel(name)
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
    return figures._save(fig, path)


def main(argv: list[str] | None = None) -> int:
    try:
        (args,) = HfArgumentParser(ExploreArguments, prog="python -m train.explore").parse_args_into_dataclasses(args=argv)
        raw = load_raw_dataset(args.dataset_name, args.data_dir)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    output_dir = Path(args.output_dir)
    summary = {split: summarise_split(dataset) for split, dataset in raw.items()}
    for split, dataset in raw.items():
        summary[split]["sample_grid"] = sample_grid(dataset, args.samples_per_class, args.seed, output_dir / f"{split}_samples.png")
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'split':<12}{'images':>8}{'NORMAL':>8}{'PNEUMONIA':>11}{'patients':>10}  sizes (median WxH)")
    for split, row in summary.items():
        print(f"{split:<12}{row['images']:>8}{row['per_class']['NORMAL']:>8}{row['per_class']['PNEUMONIA']:>11}"
              f"{row['patients_from_file_names']:>10}  {row['width'].get('median')}x{row['height'].get('median')}")
    print(f"Wrote {output_dir / 'summary.json'} and sample grids.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
