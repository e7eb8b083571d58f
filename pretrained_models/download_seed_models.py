"""Download the seed's Hugging Face backbones into pretrained_models/ (needs internet access).

Run from the repository root on a machine that can reach the Hugging Face hub:

    python pretrained_models/download_seed_models.py                 # all three folders below
    python pretrained_models/download_seed_models.py --only bert-base-uncased --only swinv2-base-patch4-window8-256

Writes pretrained_models/<folder>/ (config.json, weights, tokenizer / preprocessor files):
    bert-base-uncased/               google-bert/bert-base-uncased              text, seed preset
    swinv2-base-patch4-window8-256/  microsoft/swinv2-base-patch4-window8-256  image, seed preset
    clip-vit-large-patch14-336/      openai/clip-vit-large-patch14-336          phase 6 (about 1.7 GB)

Only PyTorch weights are fetched (safetensors when the repository has them, else pytorch_model.bin). A folder
that is already complete is left alone. Without network access the script stops with one line saying how to
copy the folders by hand (see pretrained_models/README.md); the pipeline itself never needs these folders,
its default backbones install from PyPI.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


from msa import cli

HERE = Path(__file__).resolve().parent
SEED_MODELS: dict[str, str] = {
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "swinv2-base-patch4-window8-256": "microsoft/swinv2-base-patch4-window8-256",
    "clip-vit-large-patch14-336": "openai/clip-vit-large-patch14-336",
}
# configs, tokenizer and processor files; the weights pattern is added per repository
BASE_PATTERNS = ["*.json", "*.txt", "*.model"]
MANUAL_HINT = ("on a machine with internet access run this script (or `huggingface-cli download REPO --local-dir "
               "pretrained_models/FOLDER`) and copy the folders into pretrained_models/ by hand; see "
               "pretrained_models/README.md")


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--only", action="append", choices=sorted(SEED_MODELS), metavar="FOLDER", default=None,
                   help="download only this folder (repeatable); one of " + ", ".join(SEED_MODELS))
    p.add_argument("--dest", type=Path, default=HERE,
                   help="where the model folders are created")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for the hub to answer each metadata request")
    p.add_argument("--force", action="store_true",
                   help="download again even when a folder looks complete")
    return p


def _complete(folder: Path) -> bool:
    has_weights = any((folder / n).is_file() for n in ("model.safetensors", "pytorch_model.bin",
                                                       "model.safetensors.index.json", "pytorch_model.bin.index.json"))
    return (folder / "config.json").is_file() and has_weights


def _unreachable(repo_id: str, exc: BaseException) -> cli.UserError:
    from huggingface_hub import constants

    reason = " ".join(str(exc).split()) or type(exc).__name__
    reason = reason if len(reason) <= 120 else reason[:117].rsplit(" ", 1)[0] + " ..."
    return cli.UserError(f"could not reach the Hugging Face hub ({constants.ENDPOINT}) to download {repo_id} "
                         f"({type(exc).__name__}: {reason}); {MANUAL_HINT}")


def download(folder_name: str, dest: Path, timeout: float, force: bool = False) -> Path:
    """Fetch one seed model into ``dest/folder_name``; a :class:`cli.UserError` when the hub is unreachable."""
    try:
        import huggingface_hub
    except ImportError as exc:  # pragma: no cover - it comes with transformers
        raise cli.UserError(f"huggingface_hub is not installed ({exc}); run `make setup`") from exc

    repo_id = SEED_MODELS[folder_name]
    target = dest / folder_name
    if _complete(target) and not force:
        print(f"{folder_name}: already complete in {target}, skipped (--force downloads again)")
        return target
    # safetensors first; pytorch_model.bin only for repositories without them (never both: they are large)
    for weights in ("*.safetensors", "pytorch_model*.bin"):
        try:
            huggingface_hub.snapshot_download(repo_id, local_dir=str(target), etag_timeout=timeout,
                                              allow_patterns=[*BASE_PATTERNS, weights])
        except Exception as exc:  # any failure of the hub client (DNS, refused, timeout, HTTP error) is one line
            raise _unreachable(repo_id, exc) from exc
        if _complete(target):
            print(f"{folder_name}: {repo_id} -> {target}")
            return target
    raise cli.UserError(f"{repo_id} was downloaded to {target}, but it lacks config.json or a weights file; "
                        f"{MANUAL_HINT}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(max(1, args.timeout))))
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(max(1, args.timeout))))
    for name in args.only or list(SEED_MODELS):
        download(name, args.dest, args.timeout, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
