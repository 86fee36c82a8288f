"""Command-line arguments as dataclasses, parsed by `HfArgumentParser` like the transformers examples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from transformers import TrainingArguments


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
    horizontal_flip: bool = field(
        default=False, metadata={"help": "Random left-right flips. Off by default: the heart sits on one side."}
    )

    def __post_init__(self) -> None:
        if (self.dataset_name is None) == (self.data_dir is None):
            raise ValueError("Give exactly one of --dataset_name (Hub dataset) or --data_dir (image folder).")
        if not 0.0 < self.validation_fraction < 0.5:
            raise ValueError("--validation_fraction must be between 0 and 0.5.")


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Hub id or folder of a ViT or ConvNeXt image-classification checkpoint to fine-tune."},
    )
    model_revision: Optional[str] = field(default=None, metadata={"help": "Branch, tag or commit of the checkpoint."})
    model_type: str = field(default="convnext", metadata={"help": "From scratch: `convnext` or `vit`."})
    model_size: str = field(
        default="atto",
        metadata={"help": "From scratch: convnext atto|femto|pico|nano|tiny, vit tiny|small|base."},
    )
    image_size: int = field(default=224, metadata={"help": "Square input side; images are squashed to it."})
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
                  "`youden_at_min_sensitivity`, `youden` or `fixed`."},
    )
    min_sensitivity: float = field(default=0.95, metadata={"help": "Sensitivity floor for the threshold search."})
    fixed_threshold: float = field(default=0.5, metadata={"help": "Threshold for `--threshold_strategy fixed`."})
    export_onnx: bool = field(
        default=True, metadata={"help": "Also write onnx/model.onnx, which the app runs on ONNX Runtime (~2x faster on CPU)."}
    )
    early_stopping_patience: int = field(default=5, metadata={"help": "Epochs without validation AUC gain before stopping; 0 disables."})
    hub_dataset_card_id: str = field(
        default="hf-vision/chest-xray-pneumonia", metadata={"help": "Dataset id named in the card's metadata when training from --data_dir (a local copy of it)."}
    )

    def __post_init__(self) -> None:
        if self.class_weighting not in ("balanced", "none"):
            raise ValueError("--class_weighting must be `balanced` or `none`.")
        if self.threshold_strategy not in ("youden_at_min_sensitivity", "youden", "fixed"):
            raise ValueError("--threshold_strategy must be youden_at_min_sensitivity, youden or fixed.")


@dataclass
class XRayTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults suited to this task; every Trainer flag still works."""

    output_dir: str = field(default="outputs/pneumonia-model", metadata={"help": "The model folder (= the Hub repo)."})
    eval_strategy: str = field(default="epoch", metadata={"help": "Evaluate every epoch."})
    save_strategy: str = field(default="epoch", metadata={"help": "Checkpoint every epoch."})
    logging_strategy: str = field(default="epoch", metadata={"help": "Log every epoch."})
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
