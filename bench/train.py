"""Training throughput of a recipe on this machine (images per second through Trainer, augmentation included).

    python bench/train.py [--config configs/convnext_atto_scratch.json] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

from common import REPO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(REPO / "configs" / "convnext_atto_scratch.json"))
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    import torch
    from transformers import Trainer

    from train.data import load_raw_dataset, prepare_splits
    from train.augment import XRayAugmentation
    from train.modeling import build_model
    from train.pipeline import class_weights, collate, make_loss, make_transforms, parse_arguments

    config = json.loads(open(args.config).read())
    config["data_dir"] = str((REPO / config["data_dir"]).resolve()) if not config["data_dir"].startswith("/") else config["data_dir"]
    with tempfile.TemporaryDirectory() as folder:
        config.update(output_dir=folder, max_steps=args.steps, eval_strategy="no", save_strategy="no",
                      load_best_model_at_end=False, early_stopping_patience=0, disable_tqdm=True)
        path = f"{folder}/config.json"
        open(path, "w").write(json.dumps(config))
        model_args, data_args, training_args = parse_arguments([path])
        prepared = prepare_splits(load_raw_dataset(None, data_args.data_dir), data_args, training_args.seed)
        built = build_model(model_args)
        augmentation = XRayAugmentation.from_data_arguments(data_args)
        image_size = built.processor.size["height"]  # as train.pipeline.train_draw: the size the network is fed
        train_transform, _ = make_transforms(built.processor, image_size, augmentation)
        labels = prepared.splits["train"]["label"]
        loss = make_loss(class_weights(labels, model_args.class_weighting), training_args.label_smoothing_factor)
        trainer = Trainer(model=built.model, args=training_args, train_dataset=prepared.splits["train"].with_transform(train_transform),
                          data_collator=collate, compute_loss_func=loss)
        started = time.perf_counter()
        trainer.train()
        elapsed = time.perf_counter() - started
    images = args.steps * training_args.per_device_train_batch_size
    epoch_images = len(prepared.splits["train"])
    name = model_args.model_name_or_path or f"{model_args.model_type}-{model_args.model_size} from scratch"
    print(f"{name} ({built.model.config.model_type}) at {image_size} px, "
          f"batch {training_args.per_device_train_batch_size}, "
          f"{torch.get_num_threads()} threads: {images / elapsed:.1f} training images/s "
          f"(~{epoch_images / (images / elapsed) / 60:.1f} min per epoch of {epoch_images} images)")


if __name__ == "__main__":
    sys.exit(main())
