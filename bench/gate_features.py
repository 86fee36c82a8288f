"""Which of the network's features the gate should read, judged by kinds it never saw.

    python bench/gate_features.py [--model model] [--data ../shared/data] [--sets default pooled ...]

The gate's fitting items (`train.gate.training_items`: the model's training films and augmented copies, the
synthetic negatives, the fitted part of each development folder; never the held-out part) are described once
with the pooled features and the mean and spread over positions of every stage of the (ConvNeXt) network, and
cached. Then, for each feature set, the whole gate is fitted again without one development kind at a time and
asked about that kind (`train.gate.leave_one_kind_out`), with its out-of-fold false alarms on the paediatric
training films and on their augmented copies. About 4 minutes a feature set on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from chestxray import PneumoniaClassifier  # noqa: E402
from chestxray.classifier import position_statistics, stage_indices  # noqa: E402
from chestxray.runtime import WEIGHTS_FILE, file_sha256  # noqa: E402
from train.data import drop_unreadable, load_raw_dataset, split_membership  # noqa: E402
from train.gate import (Described, GateArguments, describe, development_split, fit_gate, leave_one_kind_out,  # noqa: E402
                        training_items)
from train.ood import dataset_films  # noqa: E402

STAGES = (1, 2, 3, 4)
DEFAULT_STAGES = stage_indices(len(STAGES))  # as chestxray.classifier.stage_statistics picks
# name -> the blocks of the cached vector it reads ("default" is what chestxray.classifier.LogitsAndFeatures gives)
FEATURE_SETS = {
    "pooled": ["pooled"],
    "pooled + stage 3 mean": ["pooled", "stage3_mean"],
    "pooled + stages 2-3 mean": ["pooled", "stage2_mean", "stage3_mean"],
    "pooled + stages 2-3": ["pooled", "stage2_mean", "stage2_std", "stage3_mean", "stage3_std"],
    "default": ["pooled"] + [f"stage{s}_{k}" for s in DEFAULT_STAGES for k in ("mean", "std")],
    "pooled + stages 1-4": ["pooled"] + [f"stage{s}_{k}" for s in STAGES for k in ("mean", "std")],
}


def every_stage(network):
    """(logits, the pooled features and every stage's mean and spread) in one pass, and each block's width."""
    def forward(pixel_values: torch.Tensor):
        outputs = network.base_model(pixel_values=pixel_values, output_hidden_states=True)
        parts = [outputs.pooler_output] + [s for stage in STAGES for s in position_statistics(outputs.hidden_states[stage])]
        return network.classifier(outputs.pooler_output), torch.cat(parts, 1)

    sizes = network.config.hidden_sizes
    widths = {"pooled": sizes[-1], **{f"stage{s}_{k}": sizes[s - 1] for s in STAGES for k in ("mean", "std")}}
    return forward, widths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="model")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parent.parent.parent / "shared" / "data"))
    parser.add_argument("--cache", default="outputs", help="Folder of the described images, one file per model's weights.")
    parser.add_argument("--sets", nargs="*", default=list(FEATURE_SETS), choices=list(FEATURE_SETS))
    options = parser.parse_args()
    model_dir, data_dir = Path(options.model), Path(options.data)
    cache = Path(options.cache) / f"gate_features-{file_sha256(model_dir / WEIGHTS_FILE)[:12]}.npz"
    classifier = PneumoniaClassifier.from_pretrained(model_dir, runtime="pytorch")
    if classifier.config.model_type != "convnext":
        raise SystemExit("bench/gate_features.py reads ConvNeXt stages; this model is a " + classifier.config.model_type)
    forward, widths = every_stage(classifier.model)
    args = GateArguments()
    if not cache.is_file():
        started = time.perf_counter()
        classifier.logits_and_features = forward
        train, _ = drop_unreadable(load_raw_dataset(None, str(data_dir / "chest_xray"))["train"], "train")
        train = split_membership(train, model_dir / "splits" / "train.csv")[0]
        split = development_split(data_dir, args.holdout_fraction, args.seed)
        with torch.inference_mode():
            described = describe(classifier, training_items(classifier, dataset_films(train), len(train), data_dir, split, args))
        kinds, groups, descriptors, features = described.arrays()
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, kinds=kinds, groups=groups, descriptors=descriptors, features=features)
        print(f"described {len(kinds)} images in {time.perf_counter() - started:.0f} s -> {cache}", flush=True)
    cached = np.load(cache)
    kinds, groups, descriptors, features = (cached[k] for k in ("kinds", "groups", "descriptors", "features"))
    ends = np.cumsum(list(widths.values()))
    block = {name: slice(end - width, end) for (name, width), end in zip(widths.items(), ends)}
    classifier.logits_and_features = forward  # fit_gate records the probe; the stages' widths do not matter there
    print("| features | width | " + " | ".join(["CT", "hand", "knee", "lateral"]) + " | out-of-fold false alarms (augmented) | s |")
    for name in options.sets:
        started = time.perf_counter()
        chosen = np.hstack([features[:, block[b]] for b in FEATURE_SETS[name]])
        described = Described(list(kinds), list(groups), [descriptors], [chosen])
        unseen = leave_one_kind_out(classifier, described, args)
        cv = fit_gate(classifier, described, args)[1]["cross_validation"]
        refused = " | ".join(f"{100 * unseen[k]:.1f} %" for k in ("ct_chest", "hand", "knee", "lateral_chest"))
        print(f"| {name} | {chosen.shape[1]} | {refused} | {100 * cv['false_alarm_rate_training_films']:.2f} % "
              f"({100 * cv['false_alarm_rate_augmented_training_films']:.2f} %) | {time.perf_counter() - started:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
