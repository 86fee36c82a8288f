"""Build the model and its image processor: fine-tune a checkpoint, or start from scratch."""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    ConvNextConfig,
    EfficientNetConfig,
    PretrainedConfig,
    ViTConfig,
    ViTImageProcessorPil,
)

from chestxray.classifier import SUPPORTED_MODEL_TYPES
from train.data import ID2LABEL, LABEL2ID

# timm's ConvNeXt sizes (Woo et al. 2023 / Liu et al. 2022) and DeiT's ViT sizes.
CONVNEXT_SIZES = {
    "atto": dict(depths=[2, 2, 6, 2], hidden_sizes=[40, 80, 160, 320]),
    "femto": dict(depths=[2, 2, 6, 2], hidden_sizes=[48, 96, 192, 384]),
    "pico": dict(depths=[2, 2, 6, 2], hidden_sizes=[64, 128, 256, 512]),
    "nano": dict(depths=[2, 2, 8, 2], hidden_sizes=[80, 160, 320, 640]),
    "tiny": dict(depths=[3, 3, 9, 3], hidden_sizes=[96, 192, 384, 768]),
}
VIT_SIZES = {
    "tiny": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768),
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
# EfficientNet-Lite (Tan & Le 2019, the TF "lite" builder): B0's block layout without squeeze-and-excitation,
# with ReLU6. Per stage: (repeats, kernel, stride, expand ratio, in channels, out channels).
EFFICIENTNET_LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
EFFICIENTNET_SIZES = {"lite0": EFFICIENTNET_LITE0_STAGES}
# PyTorch's batch-norm momentum is 1 - TensorFlow's; transformers' EfficientNet default (0.99) is TensorFlow's
# number and would replace the running statistics with every batch's while training.
EFFICIENTNET_BN_MOMENTUM = 0.01
# Trained in channels-last memory: oneDNN's depthwise convolutions are much faster so on the CPU (a Lite0 step at
# 192 px, batch 32, 2 cores: 1.6 s instead of 2.8 s); ConvNeXt gains nothing (0.97 s against 0.91 s), so it stays.
CHANNELS_LAST_TYPES = ("efficientnet",)
# Grey radiographs are far from ImageNet statistics; centring on mid-grey keeps inputs near zero.
XRAY_MEAN = [0.5, 0.5, 0.5]
XRAY_STD = [0.25, 0.25, 0.25]


@dataclass
class BuiltModel:
    model: object
    processor: object
    base_model: str | None  # None when trained from scratch


def build_model(model_args) -> BuiltModel:
    built = _build(model_args)
    if built.model.config.model_type in CHANNELS_LAST_TYPES:
        built.model.to(memory_format=torch.channels_last)
    return built


def _build(model_args) -> BuiltModel:
    labels = dict(num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID)
    if model_args.model_name_or_path:
        return _from_checkpoint(model_args, labels)
    config = scratch_config(model_args.model_type, model_args.model_size, model_args.image_size, model_args.drop_path_rate)
    config.update(labels)
    if model_args.config_overrides:
        apply_overrides(config, model_args.config_overrides)
    model = AutoModelForImageClassification.from_config(config)
    return BuiltModel(model, squash_processor(model_args.image_size, XRAY_MEAN, XRAY_STD), None)


def architecture_name(config: PretrainedConfig, model_args) -> str:
    """"ConvNeXt-atto" for a ConvNeXt of a known size (also when fine-tuned from a folder), else the class name."""
    if config.model_type == "convnext":
        size = next((name for name, dims in CONVNEXT_SIZES.items()
                     if list(config.depths) == dims["depths"] and list(config.hidden_sizes) == dims["hidden_sizes"]), None)
        if size:
            return f"ConvNeXt-{size}"
    if config.model_type == "vit" and not model_args.model_name_or_path:
        return f"ViT-{model_args.model_size}"
    return config.architectures[0] if config.architectures else config.model_type


def scratch_config(model_type: str, size: str, image_size: int, drop_path_rate: float) -> PretrainedConfig:
    if model_type == "convnext":
        if size not in CONVNEXT_SIZES:
            raise ValueError(f"ConvNeXt size must be one of {list(CONVNEXT_SIZES)}, not `{size}`.")
        return ConvNextConfig(image_size=image_size, drop_path_rate=drop_path_rate, **CONVNEXT_SIZES[size])
    if model_type == "vit":
        if size not in VIT_SIZES:
            raise ValueError(f"ViT size must be one of {list(VIT_SIZES)}, not `{size}`.")
        return ViTConfig(image_size=image_size, patch_size=16, **VIT_SIZES[size])
    if model_type == "efficientnet":
        if size not in EFFICIENTNET_SIZES:
            raise ValueError(f"EfficientNet size must be one of {list(EFFICIENTNET_SIZES)}, not `{size}`.")
        return efficientnet_lite_config(image_size, drop_path_rate, EFFICIENTNET_SIZES[size])
    raise ValueError(f"--model_type must be one of {SUPPORTED_MODEL_TYPES}, not `{model_type}`.")


def efficientnet_lite_config(image_size: int, drop_connect_rate: float = 0.2,
                             stages: list[tuple] = EFFICIENTNET_LITE0_STAGES) -> EfficientNetConfig:
    """transformers' EfficientNet as Lite: ReLU6, width and depth 1.0, 1280 head channels, dropout 0.2. Its
    squeeze-and-excitation layers stay in the graph: a converted Lite checkpoint opens every gate
    (`train.convert_efficientnet_lite`)."""
    return EfficientNetConfig(
        image_size=image_size, width_coefficient=1.0, depth_coefficient=1.0, hidden_dim=1280, hidden_act="relu6",
        num_block_repeats=[s[0] for s in stages], kernel_sizes=[s[1] for s in stages], strides=[s[2] for s in stages],
        expand_ratios=[s[3] for s in stages], in_channels=[s[4] for s in stages], out_channels=[s[5] for s in stages],
        dropout_rate=0.2, drop_connect_rate=drop_connect_rate, batch_norm_momentum=EFFICIENTNET_BN_MOMENTUM,
        batch_norm_eps=1e-3)


def apply_overrides(config: PretrainedConfig, overrides: str) -> None:
    """`{"depths": [1, 1, 1, 1], ...}` (JSON, for lists) or `key=value,key=value` (scalars)."""
    if overrides.lstrip().startswith("{"):
        values = json.loads(overrides)
        unknown = [key for key in values if not hasattr(config, key)]
        if unknown:
            raise ValueError(f"Unknown config keys in --config_overrides: {unknown}.")
        config.update(values)
    else:
        config.update_from_string(overrides)


def squash_processor(image_size: int, mean: list[float], std: list[float]) -> ViTImageProcessorPil:
    """Resize the whole image to a square (no crop), as the data were published and as the app serves."""
    return ViTImageProcessorPil(size={"height": image_size, "width": image_size}, image_mean=mean, image_std=std)


def _from_checkpoint(model_args, labels: dict) -> BuiltModel:
    source = model_args.model_name_or_path
    config = AutoConfig.from_pretrained(source, revision=model_args.model_revision)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"`{source}` is a {config.model_type} model; supported: {', '.join(SUPPORTED_MODEL_TYPES)}.")
    original = AutoImageProcessor.from_pretrained(source, revision=model_args.model_revision, backend="pil")
    size = original.size.get("height") or original.size.get("shortest_edge") or model_args.image_size
    overrides = dict(labels)
    if model_args.checkpoint_image_size:
        if config.model_type == "vit":
            raise ValueError("--checkpoint_image_size works for convolutional checkpoints (ConvNeXt, EfficientNet), not ViT.")
        size = overrides["image_size"] = model_args.checkpoint_image_size
    if config.model_type == "efficientnet" and config.batch_norm_momentum > 0.5:  # a TensorFlow-style number
        overrides["batch_norm_momentum"] = EFFICIENTNET_BN_MOMENTUM
    model = AutoModelForImageClassification.from_pretrained(
        source, revision=model_args.model_revision, use_safetensors=True, ignore_mismatched_sizes=True, **overrides
    )
    # Keep the checkpoint's normalisation but squash instead of crop: the lungs fill the frame.
    processor = squash_processor(int(size), list(original.image_mean), list(original.image_std))
    return BuiltModel(model, processor, source)
