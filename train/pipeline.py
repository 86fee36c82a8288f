"""`python -m train`: fine-tune or train a ViT/ConvNeXt pneumonia classifier and write a Hub-ready folder."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from transformers import EarlyStoppingCallback, set_seed
from transformers.trainer_utils import get_last_checkpoint

from chestxray.classifier import PneumoniaClassifier
from chestxray.imaging import to_model_input
from chestxray.ood import GATE_CONFIG_FILE, GATE_FILE, REFERENCE_FILE
from chestxray.preprocess import Preprocessing
from chestxray.runtime import ONNX_FILE
from train.arguments import DataArguments, ModelArguments, XRayTrainingArguments, argument_parser
from train.augment import XRayAugmentation
from train.averaging import WeightAverageCallback
from train.calibrate import fit_operating_point, folded_logits, recorded_operating_point, select_operating_point
from train.calibration import positive_probabilities
from train.card import KERMANY_DATASET_IDS, POLICIES_FILE, ROBUSTNESS_FILE, SUMMARY_FILE, render_card, shareable_command
from train.distillation import Teachers, build_trainer, load_teachers, teacher_paths, teacher_pixel_values
from train.distillation import describe as describe_distillation
from train.data import (BATCH_HOLDOUT_SPLIT, LABEL_NAMES, PreparedData, batch_holdout_description, batch_holdout_summary,
                        load_image, load_raw_dataset, prepare_splits, write_split_lists)
from train.export_onnx import export_onnx
from train.figures import training_curves
from train.modeling import BuiltModel, architecture_name, build_model
from train.ood import REFERENCE_STATS_FILE, dataset_features, gate_summary, write_gate_for_splits, write_reference
from train.push import PushError, hub_token, push_model_folder
from train.report import dataset_logits, evaluate_split, load_metric
from train.gate import SPLITS_FILE as GATE_SPLITS_FILE
from train.shifts import shift_report, write_shift_report

logger = logging.getLogger("train")


def parse_arguments(argv: list[str] | None = None):
    """Flags, or one JSON file of them (`python -m train configs/x.json`), which later flags override."""
    parser = argument_parser()
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].endswith(".json"):
        argv = json_to_flags(json.loads(Path(argv[0]).read_text())) + list(argv[1:])
    return parser.parse_args_into_dataclasses(args=argv)


def json_to_flags(config: dict) -> list[str]:
    flags: list[str] = []
    for key, value in config.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        flags += [f"--{key}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]
    return flags


def make_transforms(processor, image_size: int, augmentation: XRayAugmentation, teachers: Teachers | None = None,
                    teacher_view: str = "augmented"):
    """Lazy `set_transform` functions: augmentation on train only, one processor for every split (and with
    teachers, each teacher's own processor on the augmented image, or on the film as filmed: `teacher_view`)."""

    teacher_processors = teachers.processors if teachers is not None else None
    preprocessing = Preprocessing.from_processor(processor)  # the arithmetic the app serves with: one code path

    def to_pixels(images: list[Image.Image]) -> list[torch.Tensor]:
        return list(preprocessing([to_model_input(image) for image in images]))

    def train_transform(batch: dict) -> dict:
        # Squash to the model size first (what the processor would do) so augmentation works on few pixels.
        images = [load_image(cell).resize((image_size, image_size), Image.Resampling.BILINEAR) for cell in batch["image"]]
        augmented = [augmentation(augmentation.reframe_normal(image, label, random), random)
                     for image, label in zip(images, batch["label"])]
        # Teachers never see the swapped margins; with `filmed` they see no augmentation at all, so a film's soft
        # label is the same however the student's copy is framed or exposed.
        judged = images if teacher_view == "filmed" else augmented
        extra = teacher_pixel_values(teacher_processors, judged) if teacher_processors else {}
        return {"pixel_values": to_pixels(augmentation.swap_margins(augmented, random)), "labels": batch["label"], **extra}

    def eval_transform(batch: dict) -> dict:
        return {"pixel_values": to_pixels([load_image(cell) for cell in batch["image"]]), "labels": batch["label"]}

    return train_transform, eval_transform


def collate(examples: list[dict]) -> dict:
    """Stacks `pixel_values` (and any teacher inputs) and the labels."""
    batch = {key: torch.stack([example[key] for example in examples]) for key in examples[0] if key != "labels"}
    batch["labels"] = torch.tensor([example["labels"] for example in examples])
    return batch


def class_weights(labels: list[int], mode: str) -> torch.Tensor | None:
    """Inverse class frequency (n / (k * count)), so the 1 : 2.9 imbalance does not bias the loss."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=len(LABEL_NAMES)).astype(float)
    return torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)


def make_loss(weights: torch.Tensor | None, label_smoothing: float):
    def weighted_cross_entropy(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        weight = weights.to(logits.device) if weights is not None else None
        loss = F.cross_entropy(logits, labels, weight=weight, label_smoothing=label_smoothing, reduction="sum")
        return loss / (num_items_in_batch if num_items_in_batch is not None else labels.numel())

    return weighted_cross_entropy


def make_compute_metrics():
    metric = load_metric()

    def compute_metrics(eval_prediction) -> dict:
        scores = positive_probabilities(eval_prediction.predictions, 1.0)
        result = metric.compute(references=eval_prediction.label_ids, prediction_scores=scores, threshold=0.5)
        return {key: value for key, value in result.items() if isinstance(value, float)}

    return compute_metrics


def resolve_checkpoint(training_args) -> str | None:
    """`--resume_from_checkpoint PATH`, or `last`/`true` for the newest checkpoint in the output folder."""
    requested = training_args.resume_from_checkpoint
    if requested is None or str(requested).lower() in ("", "false", "none"):
        return None
    if str(requested).lower() in ("true", "last", "latest"):
        checkpoint = get_last_checkpoint(training_args.output_dir) if Path(training_args.output_dir).is_dir() else None
        if checkpoint is None:
            logger.warning("No checkpoint in %s: starting from scratch.", training_args.output_dir)
        return checkpoint
    if not Path(requested).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {requested} does not exist.")
    return str(requested)


def is_kermany_data(data_args, grouped_by_patient: bool, card_dataset_id: str | None) -> bool:
    """The Kermany films, by their Hub id or their file names (`personN_virus_M`, `IM-N-M`): the card then names
    their source, hospital and citation; for anyone else's X-rays it must not."""
    return bool({data_args.dataset_name, card_dataset_id} & set(KERMANY_DATASET_IDS)) or grouped_by_patient


def describe_data(data_args, prepared: PreparedData, card_dataset_id: str | None) -> tuple[str, str]:
    """(dataset id for the card metadata, one honest sentence about the data)."""
    source = (f"the Hub dataset `{data_args.dataset_name}`" if data_args.dataset_name
              else f"a local image folder (`{Path(data_args.data_dir).name}`)"
              + (f", a copy of `{card_dataset_id}`" if card_dataset_id else ""))
    how = ("carved from the training split, grouped by patient and stratified by label"
           if prepared.grouped_by_patient else "carved from the training split per image (file names carried no patient ids)")
    if data_args.validation_split_name:
        how = f"the dataset's own `{data_args.validation_split_name}` split"
    films = ("Kermany et al. chest X-rays (CC BY 4.0)" if is_kermany_data(data_args, prepared.grouped_by_patient, card_dataset_id)
             else "Chest X-rays")
    text = f"{films} from {source}. Validation: {how}. Unreadable images are skipped and counted."
    return data_args.dataset_name or card_dataset_id, text


def split_description(split: str, data_args, grouped: bool) -> str:
    if split == "validation" and not data_args.validation_split_name:
        return "patient-level hold-out carved from the Kermany train split" if grouped else "image-level hold-out carved from the train split"
    source = data_args.dataset_name or f"the local image folder `{Path(data_args.data_dir).name}`"
    if split == "test":
        return f"`{data_args.test_split_name}` split of {source} (never used for selection)"
    return f"`{split}` split of {source}"


def write_summary(output_dir: Path, model_args, data_args, training_args, prepared, built, point, trainer,
                  minutes: float, command: str, extra: dict | None = None, seed: int | None = None) -> None:
    """`seed`: the kept draw's, where several were trained (the arguments keep the run's own --seed and --draws)."""
    model = built.model
    data_id, data_text = describe_data(data_args, prepared, model_args.hub_dataset_card_id)
    parameters = sum(p.numel() for p in model.parameters())
    weights = (output_dir / "model.safetensors").stat().st_size
    best_epoch = None
    if trainer.state.best_model_checkpoint:
        best_step = int(Path(trainer.state.best_model_checkpoint).name.split("-")[-1])
        best_epoch = next((round(row["epoch"], 2) for row in trainer.state.log_history
                           if row.get("step") == best_step and "eval_loss" in row), None)
    size = model_args.image_size if not model_args.model_name_or_path else built.processor.size["height"]
    summary = {
        "model_type": model.config.model_type,
        "architecture": architecture_name(model.config, model_args),
        "base_model": built.base_model,
        "base_model_local": bool(built.base_model) and Path(built.base_model).is_dir(),  # not a Hub id: no link, no metadata
        "parameter_count": f"{parameters / 1e6:.2f} M",
        "weights_size": f"{weights / 2**20:.1f} MiB",
        "image_size": size,
        "dataset_id": data_id,
        "data_description": data_text,
        "validation_is_carved": not data_args.validation_split_name,
        "data_is_kermany": is_kermany_data(data_args, prepared.grouped_by_patient, model_args.hub_dataset_card_id),
        "split_counts": [
            {"split": split, "normal": int((np.asarray(ds["label"]) == 0).sum()), "pneumonia": int((np.asarray(ds["label"]) == 1).sum()),
             "skipped": len(prepared.skipped_files.get(split, []))}
            for split, ds in prepared.splits.items()
        ],
        "skipped_files": prepared.skipped_files,
        "operating_point": recorded_operating_point(point, model.config),
        "hyperparameters": {
            "learning rate": training_args.learning_rate,
            **({"steps (max)": training_args.max_steps} if training_args.max_steps > 0 else {"epochs (max)": training_args.num_train_epochs}),
            "batch size": training_args.per_device_train_batch_size * max(1, training_args.world_size) * training_args.gradient_accumulation_steps,
            "optimizer": getattr(training_args.optim, "value", training_args.optim), "weight decay": training_args.weight_decay,
            "schedule": getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type),
            "warmup steps (< 1: fraction of training)": training_args.warmup_steps,
            "label smoothing": training_args.label_smoothing_factor, "drop path": model_args.drop_path_rate,
            "class weighting": model_args.class_weighting, "augmentation strength": data_args.augmentation_strength,
            "zoom range": f"±{data_args.max_scale_change * data_args.augmentation_strength:.0%}",
            "proportions range (width to height)": f"±{data_args.max_aspect_change * data_args.augmentation_strength:.0%}",
            "horizontal flip": data_args.horizontal_flip, "early stopping patience": model_args.early_stopping_patience,
            "margin augmentation (probability, largest share of a side)": f"{data_args.margin_augmentation}, {data_args.max_margin_fraction:.0%}",
            "margin swap between images (probability)": data_args.margin_swap,
            "tighter crop of NORMAL films (probability)": data_args.normal_crop,
            "knowledge distillation": describe_distillation(model_args.teacher_model_name_or_path, model_args.distillation_temperature,
                                                            model_args.distillation_weight, model_args.teacher_view),
            "framing consistency (weight, largest share of a side cut)": f"{model_args.framing_consistency}, {model_args.consistency_zoom:.0%}",
            "weight average (EMA decay per step; 0: off)": model_args.weight_average_decay,
            "seed": training_args.seed if seed is None else seed,
        },
        "training_minutes": round(minutes, 1),
        "hardware": (f"{torch.get_num_threads()} CPU threads ({platform.machine()})" if not torch.cuda.is_available()
                     else torch.cuda.get_device_name(0))
                    + (f", x {training_args.world_size} processes" if training_args.world_size > 1 else ""),
        "epochs_run": round(trainer.state.epoch or 0, 2),
        "best_epoch": best_epoch,
        "curves": "training_curves.png" if (output_dir / "training_curves.png").exists() else None,
        "command": command,
        "hub_model_id": training_args.hub_model_id,
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
    }
    summary.update(extra or {})
    (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    arguments = {"model": dataclasses.asdict(model_args), "data": dataclasses.asdict(data_args), "training": training_args.to_dict()}
    (output_dir / "training_args.json").write_text(json.dumps(arguments, indent=2, default=str) + "\n")


DRAWS_DIR = "draws"  # each draw's checkpoints while several train; removed once one is kept


@dataclasses.dataclass
class Draw:
    """One training of the recipe from one seed."""

    seed: int
    trainer: transformers.Trainer
    built: BuiltModel
    minutes: float
    record: dict


def draw_seeds(training_args) -> list[int]:
    """--seed, --seed + 1, ...: one per draw."""
    return [training_args.seed + k for k in range(training_args.draws)]


def train_draw(seed: int, model_args: ModelArguments, data_args: DataArguments, training_args: XRayTrainingArguments,
               prepared: PreparedData, teachers: Teachers | None, extra_callbacks: tuple) -> Draw:
    """Builds the model from `seed` and trains it; with several draws, each checkpoints into (and with
    `--resume_from_checkpoint last` resumes from) its own folder."""
    if training_args.draws > 1:
        training_args = dataclasses.replace(training_args, seed=seed,
                                            output_dir=str(Path(training_args.output_dir) / DRAWS_DIR / f"seed-{seed}"))
    set_seed(seed)
    built = build_model(model_args)
    image_size = built.processor.size["height"]
    augmentation = XRayAugmentation.from_data_arguments(data_args)
    # With a bigger teacher, augment at its side so that neither network sees an upsampled image.
    augment_side = max(image_size, teachers.largest_side) if teachers else image_size
    train_transform, eval_transform = make_transforms(built.processor, augment_side, augmentation, teachers,
                                                       model_args.teacher_view)
    train_set = prepared.splits["train"].with_transform(train_transform)
    validation_set = prepared.splits["validation"].with_transform(eval_transform)

    evaluating = str(training_args.eval_strategy) not in ("no", "IntervalStrategy.NO")
    patience = model_args.early_stopping_patience if evaluating else 0
    callbacks = ([EarlyStoppingCallback(patience)] if patience > 0 else []) + list(extra_callbacks)
    if model_args.weight_average_decay:
        callbacks.append(WeightAverageCallback(model_args.weight_average_decay))
    trainer = build_trainer(
        teachers, model_args.distillation_temperature, model_args.distillation_weight, model_args.framing_consistency,
        model_args.consistency_zoom,
        model=built.model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=validation_set,
        data_collator=collate,
        compute_metrics=make_compute_metrics(),
        compute_loss_func=make_loss(class_weights(prepared.splits["train"]["label"], model_args.class_weighting),
                                    training_args.label_smoothing_factor),
        callbacks=callbacks,
    )
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resolve_checkpoint(training_args))
    minutes = (time.perf_counter() - started) / 60
    score, metric = trainer.state.best_metric, training_args.metric_for_best_model.removeprefix("eval_")
    record = {"seed": seed, f"validation_{metric}": None if score is None else round(score, 4), "minutes": round(minutes, 1)}
    return Draw(seed, trainer, built, minutes, record)


def better_draw(best: Draw | None, draw: Draw, greater_is_better: bool) -> Draw:
    """The draw with the better validation metric (the one each kept its checkpoint by); the earlier on a tie."""
    if best is None:
        return draw
    new, old = draw.trainer.state.best_metric, best.trainer.state.best_metric
    if new is None or (old is not None and (new <= old if greater_is_better else new >= old)):
        return best
    return draw


def batch_holdout_record(draw: Draw, prepared: PreparedData, model_args: ModelArguments) -> dict:
    """A draw's figures on the held-out NORMAL batch at its own calibrated operating point, shown beside each draw
    so that a reader can see whether validation kept a good one; never used to choose."""
    if BATCH_HOLDOUT_SPLIT not in prepared.splits:
        return {}
    classifier = PneumoniaClassifier(draw.trainer.model.to("cpu"), draw.built.processor)
    validation, holdout = prepared.splits["validation"], prepared.splits[BATCH_HOLDOUT_SPLIT]
    point = fit_operating_point(dataset_logits(classifier, validation), np.asarray(validation["label"]),
                                model_args.threshold_strategy, model_args.min_sensitivity, model_args.fixed_threshold,
                                classifier.positive_index)
    scores = positive_probabilities(dataset_logits(classifier, holdout), point.temperature, point.bias, classifier.positive_index)
    metrics = load_metric().compute(references=np.asarray(holdout["label"]), prediction_scores=scores, threshold=point.threshold)
    return {f"batch_holdout_{name}": None if metrics[name] is None else round(float(metrics[name]), 4)
            for name in ("roc_auc", "sensitivity", "specificity")}


def log_processes(training_args) -> None:
    """How many processes train: `accelerate launch --cpu --num_processes N` starts one without mpirun, silently."""
    if training_args.world_size > 1:
        logger.info("Training on %d processes (data parallel, %s).", training_args.world_size, training_args.device.type)
    elif os.environ.get("MASTER_ADDR") and not os.environ.get("WORLD_SIZE"):  # a launcher meant several, started one
        logger.warning("One training process, although the launcher was asked for several (accelerate's CPU launcher "
                       "starts one without mpirun): for N processes on a CPU run `accelerate launch --multi_gpu "
                       "--num_processes N -m train ... --use_cpu` or `torchrun --nproc_per_node N -m train ...`.")


def push_target(training_args) -> str | None:
    """The Hub repo the finished folder goes to, checked before hours of training rather than after."""
    if not training_args.push_to_hub:
        return None
    repo = training_args.hub_model_id
    if not repo or "/" not in repo:
        raise PushError("--push_to_hub needs --hub_model_id user/name.")
    hub_token()
    training_args.push_to_hub = False  # one push, of the finished folder, by train.push
    return repo


def load_prepared_data(data_args: DataArguments, seed: int) -> PreparedData:
    prepared = prepare_splits(load_raw_dataset(data_args.dataset_name, data_args.data_dir, data_args.dataset_revision),
                              data_args, seed)
    for split, ds in prepared.splits.items():
        logger.info("%s: %d images (%s)", split, len(ds), dict(zip(LABEL_NAMES, np.bincount(ds["label"], minlength=2).tolist())))
    if prepared.skipped_count:
        logger.warning("Skipped %d unreadable images: %s", prepared.skipped_count, prepared.skipped_files)
    return prepared


def train_best_draw(model_args: ModelArguments, data_args: DataArguments, training_args: XRayTrainingArguments,
                    prepared: PreparedData, teachers: Teachers | None, extra_callbacks: tuple) -> tuple[Draw, list[dict], float]:
    """Trains each draw and keeps the best by validation; returns it, every draw's record and the minutes in all."""
    best, records, minutes = None, [], 0.0
    for seed in draw_seeds(training_args):
        draw = train_draw(seed, model_args, data_args, training_args, prepared, teachers, extra_callbacks)
        minutes += draw.minutes
        if training_args.draws > 1 and draw.trainer.is_world_process_zero():
            if training_args.world_size == 1:  # under DDP the other processes would wait for it at the next draw
                draw.record.update(batch_holdout_record(draw, prepared, model_args))
            logger.info("Draw %d of %d: %s", len(records) + 1, training_args.draws, draw.record)
        records.append(draw.record)
        best = better_draw(best, draw, training_args.greater_is_better)
        draw = None  # a draw that is not the best is freed before the next trains
    if len(records) > 1 and best.trainer.is_world_process_zero():
        shutil.rmtree(Path(training_args.output_dir) / DRAWS_DIR, ignore_errors=True)
    return best, records, minutes


def save_model_folder(classifier: PneumoniaClassifier, trainer: transformers.Trainer, built: BuiltModel,
                      prepared: PreparedData, output_dir: Path, export: bool) -> None:
    """The weights, processor and split lists; what an earlier model left in the folder goes first."""
    trainer.save_model(str(output_dir))
    (output_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle; training_args.json replaces it
    built.processor.save_pretrained(str(output_dir))
    clear_previous_results(output_dir)
    if export:
        logger.info("ONNX export: %s", export_onnx(classifier, output_dir))
    write_split_lists(prepared.splits, output_dir / "splits")


def write_gate(classifier: PneumoniaClassifier, prepared: PreparedData, validation_features: torch.Tensor,
               ood_dir: str | None, output_dir: Path) -> None:
    """The feature reference, and the learned gate where development folders were given (`train.gate`)."""
    validation = prepared.splits["validation"]
    ood_stats = write_reference(classifier, dataset_features(classifier, prepared.splits["train"]), validation_features, output_dir)
    logger.info("Out-of-distribution reference: %s", ood_stats)
    if ood_dir:
        gate = write_gate_for_splits(classifier, output_dir, prepared.splits["train"], validation, ood_dir,
                                     batch_holdout=prepared.splits.get(BATCH_HOLDOUT_SPLIT))
        logger.info("Out-of-distribution gate, flagged on held-out images: %s", gate_summary(gate))


def evaluate_splits(classifier: PneumoniaClassifier, prepared: PreparedData, data_args: DataArguments, output_dir: Path,
                    validation_logits: np.ndarray) -> dict:
    """A report for validation, the test split and the NORMAL batch held out, where each exists."""
    grouped = prepared.grouped_by_patient
    reports = {"validation": evaluate_split(classifier, prepared.splits["validation"], "validation",
                                            split_description("validation", data_args, grouped), output_dir, validation_logits)}
    if "test" in prepared.splits:
        reports["test"] = evaluate_split(classifier, prepared.splits["test"], "test", split_description("test", data_args, grouped),
                                         output_dir)
    if BATCH_HOLDOUT_SPLIT in prepared.splits:  # specificity on a NORMAL batch never trained on, at the stored threshold
        reports[BATCH_HOLDOUT_SPLIT] = evaluate_split(classifier, prepared.splits[BATCH_HOLDOUT_SPLIT], BATCH_HOLDOUT_SPLIT,
                                                      batch_holdout_description(data_args.holdout_normal_batch), output_dir)
    return reports


def log_reports(reports: dict) -> None:
    for split, report in reports.items():
        m = report["metrics"]
        logger.info("%s: ROC-AUC %s, sensitivity %.4f, specificity %.4f, ECE %.4f at threshold %.4f", split,
                    f"{m['roc_auc']:.4f}" if m["roc_auc"] is not None else "n/a", m["sensitivity"], m["specificity"], m["ece"], m["threshold"])


def run(model_args: ModelArguments, data_args: DataArguments, training_args: XRayTrainingArguments,
        extra_callbacks: tuple = (), command: str | None = None) -> dict:
    """The whole job; `extra_callbacks` are passed to the Trainer (logging, alerts, fault injection in tests);
    `command`, the card's "reproduce with", defaults to this process's own command line."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, force=True)
    transformers.utils.logging.set_verbosity_warning()
    output_dir = Path(training_args.output_dir)
    push_repo = push_target(training_args)
    log_processes(training_args)
    set_seed(training_args.seed)
    teacher_folders = teacher_paths(model_args.teacher_model_name_or_path)
    # Fail before the data are read; ONNX copies of the teachers only where they will run (on the CPU).
    teachers = load_teachers(teacher_folders, onnx=training_args.device.type == "cpu") if teacher_folders else None
    prepared = load_prepared_data(data_args, training_args.seed)

    best, records, minutes = train_best_draw(model_args, data_args, training_args, prepared, teachers, extra_callbacks)
    trainer, built = best.trainer, best.built
    if not trainer.is_world_process_zero():  # DDP: the other processes' work ends with training; one writes the folder
        return {}

    # Everything after training runs on the CPU in float32, as the app serves (weights stay float32 under bf16 autocast).
    classifier = PneumoniaClassifier(trainer.model.to("cpu"), built.processor, source=str(output_dir))
    validation = prepared.splits["validation"]
    validation_logits, validation_features = dataset_logits(classifier, validation, with_features=True)
    point = select_operating_point(classifier, validation_logits, np.asarray(validation["label"]), model_args.threshold_strategy,
                                   model_args.min_sensitivity, model_args.fixed_threshold)
    validation_logits = folded_logits(validation_logits, point, classifier.positive_index)  # the head is calibrated now
    logger.info("Operating point: %s", point)
    checks = model_args.post_training_checks
    save_model_folder(classifier, trainer, built, prepared, output_dir, export=model_args.export_onnx and checks)
    if checks:
        write_gate(classifier, prepared, validation_features, data_args.ood_dir, output_dir)
    training_curves(trainer.state.log_history, output_dir / "training_curves.png")

    reports = evaluate_splits(classifier, prepared, data_args, output_dir, validation_logits)
    if checks:
        validation_images = [load_image(cell) for cell in validation["image"]]
        write_shift_report(shift_report(classifier, validation_images, validation["label"]), output_dir)
    extra = {"draws": records} if len(records) > 1 else {}
    if BATCH_HOLDOUT_SPLIT in reports:
        extra[BATCH_HOLDOUT_SPLIT] = batch_holdout_summary(reports[BATCH_HOLDOUT_SPLIT]["metrics"], data_args.holdout_normal_batch)
    write_summary(output_dir, model_args, data_args, training_args, prepared, built, point, trainer, minutes,
                  command or shareable_command("train", sys.argv[1:]), extra, seed=best.seed)
    render_card(output_dir)
    log_reports(reports)
    logger.info("Model folder written to %s (%.1f min of training).", output_dir, minutes)
    if push_repo:
        logger.info("Pushed to %s", push_model_folder(output_dir, push_repo, bool(training_args.hub_private_repo)))
    return reports


PREVIOUS_RESULTS = (ONNX_FILE, REFERENCE_FILE, REFERENCE_STATS_FILE, GATE_FILE, GATE_CONFIG_FILE, GATE_SPLITS_FILE,
                    ROBUSTNESS_FILE, POLICIES_FILE, "metrics_*.json", "*_confusion_matrix.png", "*_reliability.png", "*_roc.png")


def clear_previous_results(output_dir: Path) -> None:
    """Removes what an earlier model in this folder left (its export, gate, shift report, policy table, metrics):
    a run that does not rewrite one of them (no gate data, no checks, no test split) must not serve or card it."""
    for pattern in PREVIOUS_RESULTS:
        for path in output_dir.glob(pattern):
            path.unlink()


def main(argv: list[str] | None = None, command: str | None = None) -> int:
    try:
        run(*parse_arguments(argv), command=command or shareable_command("train", sys.argv[1:] if argv is None else argv))
    except (PushError, OSError, ValueError) as error:  # bad arguments, missing data or checkpoint: one line
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
