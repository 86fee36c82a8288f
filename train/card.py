"""Render the model card from what sits in the model folder: the training summary and every metrics file.

The card is always a function of measured files, so `train.evaluate --update_card` and a re-render
before a push can never disagree with the numbers next to the weights.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Sequence

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from scipy.stats import binomtest

from chestxray.ood import GATE_CONFIG_FILE
from chestxray.runtime import ONNX_FILE

TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "model_card.md"
SUMMARY_FILE = "training_summary.json"
POLICIES_FILE = "operating_points.json"  # written by train.policies
ROBUSTNESS_FILE = "robustness_validation.json"  # written by train.shifts
CARD_METRICS = {"roc_auc": "ROC-AUC", "accuracy": "Accuracy", "sensitivity": "Sensitivity", "specificity": "Specificity", "f1": "F1"}
DEFAULT_SPACE_ID = "YOUR_USER/pneumonia-xray-demo"
DATASET_NAME = "Chest X-ray pneumonia (Kermany et al.)"
KERMANY_DATASET_IDS = ("hf-vision/chest-xray-pneumonia",)  # Hub copies of the Kermany films


def published_path(path: str) -> str:
    """A path as the card may show it, which is published: an absolute path (someone's disk) is cut to its name."""
    return Path(path).name if Path(path).is_absolute() else path


def shareable_command(module: str, argv: Sequence[str]) -> str:
    """The card's "reproduce with" command line, its paths as `published_path` shows them."""
    return f"python -m {module} " + shlex.join(published_path(arg) for arg in argv)


def hub_base_model(summary: dict) -> str | None:
    """The base model's Hub id, or None when it was trained from scratch or started from a local folder."""
    base = summary.get("base_model")
    return None if not base or summary.get("base_model_local") else base


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _span(interval) -> str:
    return "n/a" if not interval else f"{interval[0]:.3f}–{interval[1]:.3f}"


def _percent_span(interval) -> str:
    return "n/a" if not interval else f"{interval[0] * 100:.1f}–{interval[1] * 100:.1f} %"


def rate_interval(rate: float, count: int, confidence_level: float = 0.95) -> list[float] | None:
    """The Wilson interval of a share measured on `count` images (the gate's held-out rates)."""
    if not count:
        return None
    interval = binomtest(round(rate * count), count).proportion_ci(confidence_level=confidence_level, method="wilson")
    return [float(interval.low), float(interval.high)]


def load_reports(model_dir: Path) -> list[dict]:
    """metrics_<split>.json files, validation first."""
    reports = [json.loads(path.read_text()) for path in sorted(model_dir.glob("metrics_*.json"))]
    return sorted(reports, key=lambda report: (report["split"] != "validation", report["split"]))


def eval_results(reports: list[dict], dataset_id: str | None, kermany: bool = True) -> list[EvalResult]:
    """The model-index: Hub metadata, so plain names only (no local paths, no Markdown)."""
    return [
        EvalResult(
            task_type="image-classification",
            task_name="Pneumonia classification",
            dataset_type=dataset_id or "imagefolder",
            dataset_name=DATASET_NAME if kermany else "Chest X-ray pneumonia",
            dataset_split=report["split"],
            metric_type=metric,
            metric_name=name,
            metric_value=round(float(report["metrics"][metric]), 4),
        )
        for report in reports
        for metric, name in CARD_METRICS.items()
        if report["metrics"].get(metric) is not None
    ]


def share_files(model_dir: Path) -> None:
    """safetensors writes its files readable by their owner only (0600); a model folder served by another user (a
    container, a shared machine) must be readable like the rest of it: owner's read/write, everyone's read, as umask allows."""
    umask = os.umask(0)
    os.umask(umask)
    for path in model_dir.rglob("*.safetensors"):
        if path.is_file() and not path.stat().st_mode & 0o044:
            path.chmod(0o644 & ~umask)


def render_card(model_dir: str | Path, repo_id: str | None = None, space_id: str | None = None) -> ModelCard:
    """Write `README.md` in `model_dir` from `model_card.md` and the measured results; return the card. The card is
    the last thing every writer of a model folder writes, so the folder's files are made readable here too."""
    model_dir = Path(model_dir)
    share_files(model_dir)
    summary = {"data_is_kermany": True, **json.loads((model_dir / SUMMARY_FILE).read_text())}  # older folders: Kermany
    reports = load_reports(model_dir)
    repo_id = repo_id or summary.get("hub_model_id") or f"YOUR_USER/pneumonia-xray-{summary['architecture'].lower()}"
    card_data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        license="cc-by-4.0",
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["medical-imaging", "chest-x-ray", "pneumonia", "image-classification", summary["model_type"]],
        datasets=[summary["dataset_id"]] if summary.get("dataset_id") else None,
        base_model=hub_base_model(summary),
        metrics=["roc_auc", "accuracy", "recall", "precision", "f1"],
        eval_results=eval_results(reports, summary.get("dataset_id"), summary["data_is_kermany"]) or None,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        fmt=_fmt,
        span=_span,
        percent_span=_percent_span,
        rate_interval=rate_interval,
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        space_id=space_id or summary.get("space_id") or DEFAULT_SPACE_ID,
        reports=reports,
        hub_base_model=hub_base_model(summary),
        base_model_name=Path(summary["base_model"]).name if summary.get("base_model") else None,
        has_onnx=(model_dir / ONNX_FILE).is_file(),
        robustness=json.loads((model_dir / ROBUSTNESS_FILE).read_text()) if (model_dir / ROBUSTNESS_FILE).is_file() else None,
        gate=json.loads((model_dir / GATE_CONFIG_FILE).read_text()) if (model_dir / GATE_CONFIG_FILE).is_file() else None,
        policies=json.loads((model_dir / POLICIES_FILE).read_text()) if (model_dir / POLICIES_FILE).is_file() else None,
        **{key: value for key, value in summary.items() if key not in ("hub_model_id", "space_id")},
    )
    card.save(model_dir / "README.md")
    return card
