"""Command-line arguments as dataclasses, parsed by `HfArgumentParser` like the transformers examples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from transformers import HfArgumentParser, TrainingArguments

TEACHER_VIEWS = ("augmented", "filmed")


@dataclass
class DataArguments:
    dataset_name: Optional[str] = field(
        default=None, metadata={"help": "Hub dataset id with `image`/`label` columns, e.g. hf-vision/chest-xray-pneumonia."}
    )
    dataset_revision: Optional[str] = field(default=None, metadata={"help": "Branch, tag or commit of the Hub dataset."})
    data_dir: Optional[str] = field(
        default=None, metadata={"help": "Image folder laid out as DIR/<split>/{NORMAL,PNEUMONIA}/*.jpeg."}
    )
    train_split_name: str = field(default="train", metadata={"help": "Split to train on (validation is carved from it)."})
    validation_split_name: Optional[str] = field(
        default=None,
        metadata={"help": "Use this existing split for validation instead of carving one from train (the official "
                  "16-image split is too small to select on)."},
    )
    test_split_name: str = field(
        default="test", metadata={"help": "Split reported at the end if present; never used to select anything."}
    )
    validation_fraction: float = field(default=0.15, metadata={"help": "Share of training patients held out for validation."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Truncate training data (quick runs)."})
    augmentation_strength: float = field(
        default=1.0, metadata={"help": "Scales every augmentation range; 0 turns augmentation off."}
    )
    max_scale_change: float = field(
        default=0.10,
        metadata={"help": "Random zoom in/out range (0.10 = 0.9-1.1x, times the strength): framing differs between sites."},
    )
    max_aspect_change: float = field(
        default=0.0,
        metadata={"help": "Random change of the image's proportions (0.25: width to height between 1/1.25 and 1.25 times "
                  "its own, times the strength). Every film is squashed to a square, so a film's shape becomes its anatomy's "
                  "proportions, and Kermany's classes differ in shape (docs/experiments.md). 0: off."},
    )
    horizontal_flip: bool = field(
        default=False, metadata={"help": "Random left-right flips. Off by default: the heart sits on one side."}
    )
    holdout_normal_batch: Optional[str] = field(
        default=None,
        metadata={"help": "`NORMAL2` or `IM`: hold that NORMAL batch out of training and validation entirely (with a matched "
                  "share of PNEUMONIA patients) and report specificity on it at the stored threshold: a new-batch check."},
    )
    holdout_pneumonia_fraction: Optional[float] = field(
        default=None,
        metadata={"help": "Share of PNEUMONIA images held out with the batch; default: the held-out share of NORMAL images."},
    )
    split_seed: Optional[int] = field(
        default=None,
        metadata={"help": "Seed of the validation carve and the batch hold-out; default: --seed. Fixing it while --seed "
                  "changes trains on the same split from another start, which measures how much a recipe varies by chance."},
    )
    ood_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Development images that are not frontal paediatric chest films (DIR/ood/<kind>/, DIR/adult_nih/): "
                  "fits the learned out-of-distribution gate after training (as `python -m train.ood`). Unset: the "
                  "feature-distance reference and the image rules only."},
    )
    margin_augmentation: float = field(
        default=0.0,
        metadata={"help": "Probability of randomising an image's margins (a crop into them, an added border, black or white "
                  "bars, the edges' exposure): the border shortcut of issue 11. 0.5 in the distillation recipe."},
    )
    max_margin_fraction: float = field(
        default=0.15, metadata={"help": "Largest share of each side the margin augmentation crops, pads or covers (times the strength)."}
    )
    margin_swap: float = field(
        default=0.0,
        metadata={"help": "Probability that a training image keeps its label and centre but takes the margins (up to "
                  "--max_margin_fraction of each side) of another image of its batch, of either class: the margins stop "
                  "predicting the label. Teachers see the image before the swap."},
    )
    normal_crop: float = field(
        default=0.0,
        metadata={"help": "Probability that a NORMAL training film is first cropped tighter (up to --max_margin_fraction off "
                  "each side, drawn per side), so that a chest filling the picture stops meaning PNEUMONIA: in this data "
                  "PNEUMONIA films show less background. Label-dependent, unlike every other augmentation; it reversed the "
                  "bias at a cost on a new batch (docs/experiments.md), so the bundled recipe leaves it at 0."},
    )

    def __post_init__(self) -> None:
        if (self.dataset_name is None) == (self.data_dir is None):
            raise ValueError("Give exactly one of --dataset_name (Hub dataset) or --data_dir (image folder).")
        if not 0.0 < self.validation_fraction < 0.5:
            raise ValueError("--validation_fraction must be between 0 and 0.5.")
        if self.holdout_normal_batch is not None:
            self.holdout_normal_batch = self.holdout_normal_batch.upper()
            if self.holdout_normal_batch not in ("IM", "NORMAL2"):
                raise ValueError("--holdout_normal_batch must be NORMAL2 or IM (the two batches of Kermany's NORMAL images).")
        if self.holdout_pneumonia_fraction is not None and not 0.0 < self.holdout_pneumonia_fraction < 1.0:
            raise ValueError("--holdout_pneumonia_fraction must be between 0 and 1.")
        if self.max_aspect_change < 0:
            raise ValueError("--max_aspect_change must be >= 0.")
        if not all(0.0 <= p <= 1.0 for p in (self.margin_augmentation, self.margin_swap, self.normal_crop)):
            raise ValueError("--margin_augmentation, --margin_swap and --normal_crop are probabilities, between 0 and 1.")


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Hub id or folder of a ViT, ConvNeXt or EfficientNet image-classification checkpoint to fine-tune "
                  "(`python -m train.convert_efficientnet_lite` makes one from the ImageNet Lite0 weights)."},
    )
    model_revision: Optional[str] = field(default=None, metadata={"help": "Branch, tag or commit of the checkpoint."})
    model_type: str = field(default="convnext", metadata={"help": "From scratch: `convnext`, `vit` or `efficientnet`."})
    model_size: str = field(
        default="atto",
        metadata={"help": "From scratch: convnext atto|femto|pico|nano|tiny, vit tiny|small|base, efficientnet lite0."},
    )
    image_size: int = field(default=224, metadata={"help": "Square input side; images are squashed to it."})
    checkpoint_image_size: Optional[int] = field(
        default=None,
        metadata={"help": "Fine-tune a convolutional checkpoint (ConvNeXt, EfficientNet) at this input side instead of its "
                  "own (e.g. 192 to match a student, 64 for quick tests); EfficientNet wants a multiple of 32."},
    )
    drop_path_rate: float = field(default=0.1, metadata={"help": "Stochastic depth (from scratch)."})
    config_overrides: Optional[str] = field(
        default=None, metadata={"help": "From scratch: JSON (`{\"depths\": [2, 2, 6, 2]}`) or `key=value,...` applied to the config."}
    )
    class_weighting: str = field(
        default="balanced", metadata={"help": "`balanced` (inverse class frequency) or `none`."}
    )
    threshold_strategy: str = field(
        default="youden_at_min_sensitivity",
        metadata={"help": "How the stored decision threshold is chosen on validation: "
                  "`youden_at_min_sensitivity` (best Youden's J with sensitivity >= --min_sensitivity), "
                  "`specificity_at_min_sensitivity` (the most specific cut with that sensitivity), `youden` or `fixed`."},
    )
    min_sensitivity: float = field(default=0.95, metadata={"help": "Sensitivity floor for the threshold search."})
    fixed_threshold: float = field(default=0.5, metadata={"help": "Threshold for `--threshold_strategy fixed`."})
    export_onnx: bool = field(
        default=True, metadata={"help": "Also write onnx/model.onnx, which the app runs on ONNX Runtime (the network ~1.5x as fast on CPU)."}
    )
    post_training_checks: bool = field(
        default=True,
        metadata={"help": "After training: the ONNX export, the out-of-distribution reference and the acquisition-shift "
                  "report (minutes on a CPU). `false` for smoke runs: the folder still serves, on PyTorch, with the image checks only."},
    )
    teacher_model_name_or_path: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Knowledge distillation: one or more model folders written by `python -m train` (space- or "
                  "comma-separated; a list in a JSON config). Their logits, averaged, teach the student."},
    )
    distillation_temperature: float = field(default=2.0, metadata={"help": "Softmax temperature of the distillation term."})
    distillation_weight: float = field(
        default=0.5, metadata={"help": "Share of the distillation term in the loss; the rest is the class-weighted CE."}
    )
    teacher_view: str = field(
        default="augmented",
        metadata={"help": "What the teachers judge: `augmented` (the student's augmented image, before any margin swap) or "
                  "`filmed` (the film as filmed, unaugmented: a film's soft label then does not depend on how the "
                  "student's copy is framed; it did not change the framing bias, docs/experiments.md)."},
    )
    framing_consistency: float = field(
        default=0.0,
        metadata={"help": "Weight of a framing-consistency term: each training image is also cropped tighter (a random "
                  "box, 1 - --consistency_zoom to 1 of its width and, drawn apart, of its height, squashed back) and the "
                  "student's answer on that copy is pulled towards its answer on the image (T^2 KL at the distillation "
                  "temperature; one more forward and backward pass a step). 0 (default): off."},
    )
    consistency_zoom: float = field(default=0.25, metadata={"help": "Largest share of a side the framing-consistency copy cuts away."})
    weight_average_decay: float = field(
        default=0.0,
        metadata={"help": "Evaluate, checkpoint and keep an exponential moving average of the weights with this decay per "
                  "optimizer step (e.g. 0.99: an average over about the last 100 steps; train/averaging.py). 0 (default): off."},
    )
    early_stopping_patience: int = field(default=5, metadata={"help": "Epochs without validation AUC gain before stopping; 0 disables."})
    hub_dataset_card_id: Optional[str] = field(
        default=None, metadata={"help": "When --data_dir is a local copy of a Hub dataset, its id, named in the card's metadata "
                                "(e.g. hf-vision/chest-xray-pneumonia). Unset: the card names no Hub dataset."}
    )

    def __post_init__(self) -> None:
        if self.class_weighting not in ("balanced", "none"):
            raise ValueError("--class_weighting must be `balanced` or `none`.")
        from train.calibration import STRATEGIES  # here, not at the top: `--help` stays fast without scipy

        if self.threshold_strategy not in STRATEGIES:
            raise ValueError(f"--threshold_strategy must be one of {', '.join(STRATEGIES)}.")
        if self.teacher_view not in TEACHER_VIEWS:
            raise ValueError(f"--teacher_view must be one of {', '.join(TEACHER_VIEWS)}.")
        if self.framing_consistency < 0 or not 0.0 < self.consistency_zoom < 1.0:
            raise ValueError("--framing_consistency must be >= 0 and --consistency_zoom between 0 and 1 (exclusive).")
        if not 0.0 <= self.weight_average_decay < 1.0:
            raise ValueError("--weight_average_decay must be 0 (off) or between 0 and 1.")
        if not 0.0 <= self.distillation_weight <= 1.0 or self.distillation_temperature <= 0:
            raise ValueError("--distillation_weight must be between 0 and 1 and --distillation_temperature positive.")


@dataclass
class XRayTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults suited to this task; every Trainer flag still works."""

    output_dir: str = field(default="outputs/pneumonia-model", metadata={"help": "The model folder (= the Hub repo)."})
    eval_strategy: str = field(default="epoch", metadata={"help": "Evaluate every epoch."})
    save_strategy: str = field(default="epoch", metadata={"help": "Checkpoint every epoch."})
    logging_strategy: str = field(default="steps", metadata={"help": "Log the training loss every `logging_steps`."})
    logging_steps: float = field(
        default=0.02, metadata={"help": "Steps between loss logs; below 1, a fraction of the run (0.02: ~50 points on the curve)."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Keep the best validation checkpoint."})
    metric_for_best_model: str = field(default="roc_auc", metadata={"help": "Validation metric that picks the checkpoint."})
    greater_is_better: bool = field(default=True, metadata={"help": "Higher roc_auc is better."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept on disk."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the image column for the transforms."})
    report_to: str = field(default="none", metadata={"help": "Loggers (tensorboard, wandb, ...)."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate (use ~1e-3 from scratch)."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size per device."})
    draws: int = field(
        default=1,
        metadata={"help": "Train this many times, from --seed, --seed + 1, ... on the same split, and keep the draw with "
                  "the best validation --metric_for_best_model: one run is one draw, and on a new batch of films two draws "
                  "of one recipe differed by 0.04 of specificity (docs/experiments.md). Costs that many trainings."},
    )
    auto_mixed_precision: bool = field(
        default=True,
        metadata={"help": "On a CUDA GPU with bfloat16, train in bf16 autocast with TF32 matmuls; on a CPU nothing changes, "
                  "so one command runs on both. `false` keeps float32 everywhere."},
    )

    def __post_init__(self) -> None:
        if self.auto_mixed_precision and not self.use_cpu and not self.fp16:
            import torch

            if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
                self.bf16 = True
                self.tf32 = True if self.tf32 is None else self.tf32
        super().__post_init__()
        if self.draws < 1:
            raise ValueError("--draws must be 1 or more.")
        if self.draws > 1 and not self.load_best_model_at_end:
            raise ValueError("--draws above 1 keeps the draw with the best validation metric: it needs evaluation "
                             "and --load_best_model_at_end true.")
        if self.draws > 1 and str(self.resume_from_checkpoint or "").lower() not in ("", "false", "none", "true", "last", "latest"):
            raise ValueError("With --draws above 1, --resume_from_checkpoint last resumes each draw from its own folder; "
                             "a checkpoint path would start every draw from it.")


def argument_parser() -> HfArgumentParser:
    """The parser of `python -m train`; importing it costs no Trainer, datasets or plotting imports (fast `--help`)."""
    return HfArgumentParser((ModelArguments, DataArguments, XRayTrainingArguments), prog="python -m train",
                            description="Train or fine-tune a NORMAL/PNEUMONIA classifier and write a Hub-ready model folder. "
                            "Arguments may also come from one JSON file: python -m train configs/default_model.json")
