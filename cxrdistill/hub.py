"""Publishing on the Hugging Face Hub: push a saved model folder, pull one back, and stage / push the demo Space.

Loading lives with the models (:func:`cxrdistill.models.load_model`, :mod:`cxrdistill.models.hub_files`), cards in
:mod:`cxrdistill.models.card`, the released folders in :mod:`cxrdistill.release`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import HfHubHTTPError

from cxrdistill.models import load_model
from cxrdistill.models.hub_files import (
    CONFIG_NAME,
    PICKLE_WEIGHTS,
    RELEASE_FILES,
    WEIGHTS_NAME,
    ModelLoadError,
    resolve_file,
)
from cxrdistill.release import APP_MODELS

logger = logging.getLogger(__name__)


def check_release_folder(folder: str | os.PathLike) -> list[str]:
    """Files of ``folder`` to publish; raises if a required one is missing or pickled weights are present."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is not a folder")
    present = {p.name for p in folder.iterdir() if p.is_file()}
    pickles = sorted(present & set(PICKLE_WEIGHTS))
    if pickles:
        raise ModelLoadError(f"{folder} holds pickled weights {pickles}; only safetensors are published")
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME, "README.md") if name not in present]
    if missing:
        raise ModelLoadError(f"{folder} lacks {missing}; save the model with save_pretrained first")
    load_model(folder)  # never publish something that does not load
    return [name for name in RELEASE_FILES if name in present]


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    branch: str | None = None,
    tag: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
) -> str:
    """Publish a saved model folder to ``repo_id`` in one commit (optionally on ``branch``, then ``tag`` it).

    Returns the commit id.
    """
    files = check_release_folder(folder)
    api = HfApi(token=token)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if branch:
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            allow_patterns=files,
            revision=branch,
            commit_message=commit_message or f"Upload {', '.join(files)} with cxrdistill",
        )
    except _transport_errors() as error:
        raise ModelLoadError(
            f"could not push {folder} to {repo_id} ({type(error).__name__}: {error}); nothing was published: "
            "a Hub commit is all or nothing, so the repo is as it was. Try again."
        ) from error
    if tag:
        try:
            api.create_tag(repo_id, tag=tag, revision=commit.oid)
        except _transport_errors() as error:
            raise ModelLoadError(
                f"pushed {folder} to {repo_id} as commit {commit.oid}, but tagging it {tag!r} failed "
                f"({type(error).__name__}: {error}); tag it with: huggingface-cli tag {repo_id} {tag} -r {commit.oid}"
            ) from error
    logger.info("pushed %s to %s at %s", folder, repo_id, commit.oid)
    return commit.oid


def pull(
    repo_id: str, *, revision: str | None = None, local_dir: str | os.PathLike | None = None, token: str | None = None
) -> Path:
    """Download a model repo (only the release files) and check that it loads; returns the folder."""
    if not os.path.isdir(repo_id):
        # Resolving config.json first turns a missing repo or revision into a clear ModelLoadError.
        resolve_file(repo_id, CONFIG_NAME, revision=revision, token=token)
    folder = snapshot_download(
        repo_id, revision=revision, local_dir=local_dir, allow_patterns=list(RELEASE_FILES), token=token
    )
    load_model(folder)
    return Path(folder)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What a failed Hub call raises: HTTP errors, and the HTTP client's own connection / timeout errors (httpx,
    or httpx2 in newer huggingface_hub; requests' are OSErrors)."""
    import importlib

    errors: list[type[BaseException]] = [HfHubHTTPError, OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


SPACE_FILES = ("README.md", "requirements.txt")  # from the repository's spaces/ folder


def stage_space(
    repo_root: str | os.PathLike, destination: str | os.PathLike, model_repos: list[str] | None = None
) -> list[str]:
    """Lay out the Space in ``destination`` from a cxrdistill checkout at ``repo_root``; returns its files.

    The Space is the repository's own ``app.py``, the ``cxrdistill`` package source and the released ``models/``
    folders the app loads (not, e.g., the TB teacher), plus ``spaces/README.md`` (its YAML header gets
    ``models: model_repos``) and ``spaces/requirements.txt``. Nothing is kept in git twice: the Space is assembled
    at push time.
    """
    import shutil

    root, destination = Path(repo_root), Path(destination)
    required = [root / "app.py", root / "cxrdistill" / "__init__.py", *(root / "spaces" / f for f in SPACE_FILES)]
    missing = [str(p) for p in required if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{root} is not a cxrdistill checkout (missing {', '.join(missing)})")
    shutil.copy2(root / "app.py", destination / "app.py")
    shutil.copy2(root / "spaces" / "requirements.txt", destination / "requirements.txt")
    shutil.copytree(
        root / "cxrdistill", destination / "cxrdistill", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    for folder in sorted((root / "models").glob("*/")):
        if folder.name in APP_MODELS and (folder / CONFIG_NAME).is_file():  # only what the app loads
            files = check_release_folder(folder)
            (destination / "models" / folder.name).mkdir(parents=True)
            for name in files:
                shutil.copy2(folder / name, destination / "models" / folder.name / name)
    card = (root / "spaces" / "README.md").read_text()
    header, separator, body = card.removeprefix("---\n").partition("\n---\n")
    if not separator:
        raise ValueError("spaces/README.md must start with a YAML header between '---' lines")
    lines = [line for line in header.splitlines() if not line.startswith("models:")]
    lines.append("models: " + json.dumps(sorted(model_repos or [])))
    (destination / "README.md").write_text("---\n" + "\n".join(lines) + "\n---\n" + body)
    return sorted(str(p.relative_to(destination)) for p in destination.rglob("*") if p.is_file())


def push_space(
    repo_id: str,
    repo_root: str | os.PathLike = ".",
    *,
    model_repos: list[str] | None = None,
    private: bool = False,
    token: str | None = None,
) -> str:
    """Create (or update) the Gradio Space ``repo_id`` from the checkout at ``repo_root`` in one commit.

    Files the new Space no longer has are deleted in the same commit. Returns the commit id.
    """
    import tempfile

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory(prefix="cxrdistill-space-") as staging:
        files = stage_space(repo_root, staging, model_repos)
        commit = api.upload_folder(
            repo_id=repo_id,
            repo_type="space",
            folder_path=staging,
            delete_patterns=["*"],  # a file removed from the app is removed from the Space
            commit_message=f"Deploy the cxrdistill demo ({len(files)} files)",
        )
    logger.info("pushed the Space %s at %s", repo_id, commit.oid)
    return commit.oid


__all__ = ["check_release_folder", "pull", "push_folder", "push_space", "stage_space"]
