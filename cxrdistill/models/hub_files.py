"""Hub file resolution for cxrdistill models: the file names of a release and where a file of a folder or a Hub repo
lies on disk (the counterpart of timm's ``_hub.py``). Nothing here knows about model classes or cards.
"""

from __future__ import annotations

import os

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
METRICS_NAME = "metrics.json"
RELEASE_FILES = (CONFIG_NAME, WEIGHTS_NAME, "README.md", METRICS_NAME)
PICKLE_WEIGHTS = ("pytorch_model.bin", "model.pt", "model.pth", "model.ckpt")
REPO_URL = "https://github.com/cxrdistill/cxrdistill"


class ModelLoadError(OSError):
    """A model could not be loaded; the message names the repo, revision, file or key at fault."""


def resolve_file(
    source: str | os.PathLike,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> str:
    """Local path of ``filename`` from a folder or a Hub repo (``hf_hub_download``, at ``revision``), with errors that
    say what is missing.

    Raises:
        ModelLoadError: a folder without the file, a file given for a folder, a missing repo, revision or file, no
            network in offline mode, or a malformed repo id.
    """
    source = str(source)
    if os.path.isdir(source):
        path = os.path.join(source, filename)
        if not os.path.isfile(path):
            raise ModelLoadError(f"{source} has no {filename}{_pickle_hint(os.listdir(source), filename)}")
        return path
    if os.path.exists(source):
        raise ModelLoadError(f"{source} is a file; give the folder that holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        return hf_hub_download(
            repo_id=source,
            filename=filename,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )
    except RepositoryNotFoundError as error:
        raise ModelLoadError(
            f"no model repo {source!r} on {_endpoint()} (or it is private and no token was given)"
        ) from error
    except RevisionNotFoundError as error:
        raise ModelLoadError(f"repo {source!r} has no revision {revision!r} (tag, branch or commit)") from error
    except LocalEntryNotFoundError as error:  # before EntryNotFoundError: it is a subclass
        raise ModelLoadError(
            f"{where(source, revision)}: {filename} is not in the local cache and the Hub cannot be reached "
            "(offline mode, or no network)"
        ) from error
    except EntryNotFoundError as error:
        raise ModelLoadError(f"{where(source, revision)} has no {filename}{_remote_pickle_hint(filename)}") from error
    except (HfHubHTTPError, ValueError) as error:  # ValueError: a malformed repo id
        raise ModelLoadError(f"could not fetch {filename} of {where(source, revision)}: {error}") from error


def where(source: str, revision: str | None) -> str:
    return f"{source!r}" + (f" at revision {revision!r}" if revision else "")


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _pickle_hint(files: list[str], filename: str) -> str:
    if filename == WEIGHTS_NAME and any(name in files for name in PICKLE_WEIGHTS):
        return " (it has pickled PyTorch weights, which cxrdistill never loads: convert them to safetensors)"
    return ""


def _remote_pickle_hint(filename: str) -> str:
    if filename == WEIGHTS_NAME:
        return " (pickled .bin/.pt weights are never loaded: the repo must hold safetensors)"
    return ""
