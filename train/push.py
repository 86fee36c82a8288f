"""`python -m train.push`: publish a model folder to the Hugging Face Hub as it is on disk."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError
from transformers import HfArgumentParser

from chestxray.runtime import first_line
from train.card import SUMMARY_FILE, render_card

# Trainer checkpoints (and those of --draws, left by a run that crashed) hold optimizer pickles and are only for
# resuming; they never go to the Hub.
IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "draws/**", "runs/**", "*.pt", "*.pth", "*.bin", "*.pkl", ".*"]
REQUIRED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


class PushError(RuntimeError):
    """A push that cannot happen; the message is one line saying why and what to do."""


@dataclass
class PushArguments:
    model_dir: str = field(metadata={"help": "The model folder written by `python -m train`."})
    repo_id: str = field(metadata={"help": "Target Hub repo, `user/name`."})
    private: bool = field(default=False, metadata={"help": "Create the repo as private."})
    commit_message: str = field(default="Upload pneumonia classifier", metadata={"help": "Commit message."})


def hub_token() -> str:
    """Fail before any work when pushing is impossible: offline, or no credentials."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise PushError("HF_HUB_OFFLINE is set: cannot push to the Hugging Face Hub while offline.")
    token = get_token()
    if not token:
        raise PushError("No Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again.")
    return token


def push_model_folder(model_dir: str | Path, repo_id: str, private: bool = False,
                      commit_message: str = "Upload pneumonia classifier") -> str:
    """create_repo + upload_folder; returns the repo URL."""
    model_dir = Path(model_dir)
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    if missing:
        raise PushError(f"`{model_dir}` is not a model folder: missing {', '.join(missing)}.")
    if repo_id.count("/") != 1:
        raise PushError(f"--repo_id must look like `user/name`, not `{repo_id}`.")
    token = hub_token()
    card = model_dir / "README.md"
    card_before = card.read_bytes() if card.is_file() else None
    if (model_dir / SUMMARY_FILE).is_file():
        render_card(model_dir, repo_id=repo_id)  # the card's snippets name the real repo
    api, pushed = HfApi(token=token), False
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(model_dir), repo_id=repo_id, repo_type="model",
                          ignore_patterns=IGNORE_PATTERNS, commit_message=commit_message)
        pushed = True
    except HfHubHTTPError as error:
        raise PushError(f"The Hub refused the push to `{repo_id}`: {first_line(error)}") from None
    except Exception as error:  # connection, TLS, proxy: the network boundary, whatever the HTTP library
        raise PushError(f"Cannot reach the Hugging Face Hub to push `{repo_id}`: {type(error).__name__}: {error}") from None
    finally:
        if not pushed and card_before is not None:  # a push that did not happen leaves the folder as it was
            card.write_bytes(card_before)
    return str(url)


def main(argv: list[str] | None = None) -> int:
    (args,) = HfArgumentParser(PushArguments, prog="python -m train.push").parse_args_into_dataclasses(args=argv)
    try:
        url = push_model_folder(args.model_dir, args.repo_id, args.private, args.commit_message)
    except PushError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Pushed {args.model_dir} to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
