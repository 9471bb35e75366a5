"""Checkpoints on the Hugging Face Hub: `hf://ORG/NAME[@REVISION]` wherever a checkpoint is read,
and the upload behind `specmae push` (docs/hub.md).

    fetch("hf://org/name@v1")   -> the local checkpoint folder in huggingface_hub's cache

A name is fetched in two steps through `huggingface_hub.hf_hub_download`, so its cache, its token
(`HF_TOKEN`, `hf auth login`), its endpoint (`HF_ENDPOINT`) and its offline mode (`HF_HUB_OFFLINE=1`)
apply: config.json first, whose format, version and sections are checked, then model.safetensors
of the same commit. Nothing else is downloaded (no optimizer state, card or figures). Every
failure is one CheckpointError naming the repository. Nothing here touches the network unless a
`hf://` name is given; huggingface_hub is the optional extra `specmae[hub]`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from .store import CONFIG, WEIGHTS, CheckpointError, check_config

PREFIX = "hf://"
EXTRA = "pip install 'specmae[hub]'"


def is_hub_name(path) -> bool:
    """Whether `path` is a `hf://` name (a string; a Path would have merged the slashes)."""
    return isinstance(path, str) and path.startswith(PREFIX)


def parse_name(name: str) -> tuple[str, str | None]:
    """'hf://org/name@rev' -> ('org/name', 'rev'); the revision is None when not given."""
    repo, _, revision = name[len(PREFIX):].partition("@")
    parts = repo.split("/")
    if not 1 <= len(parts) <= 2 or not all(parts) or (_ and not revision):
        raise CheckpointError(f"{name}: expected hf://ORG/NAME or hf://ORG/NAME@REVISION (a branch, tag or commit)")
    return repo, revision or None


def reference(path) -> str:
    """How an output records the checkpoint it was made from: a `hf://` name as given, a local
    path made absolute."""
    return path if is_hub_name(path) else str(Path(path).resolve())


def huggingface_hub(what: str):
    """The huggingface_hub module, or an error naming the extra that installs it."""
    try:
        import huggingface_hub
    except ImportError:
        raise CheckpointError(f"{what}: the Hugging Face Hub needs the huggingface_hub package: {EXTRA}") from None
    return huggingface_hub


def fetch(name: str, check: Callable[[dict, str], object]) -> Path:
    """A `hf://` name -> the checkpoint folder in huggingface_hub's cache (config.json and weights).

    config.json is downloaded and checked (format, version, every section) before any weight is;
    the weights come from the commit the config came from, so a branch that moves between the two
    calls cannot mix them. A failed download leaves the cache as it was; the next call fetches
    what is missing.
    """
    repo, revision = parse_name(name)
    hub = huggingface_hub(name)
    try:
        config = Path(hub.hf_hub_download(repo, CONFIG, revision=revision))
        try:
            raw = json.loads(config.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{name}: not a specmae checkpoint: its {CONFIG} is not JSON ({e}); "
                                  f"it holds {_holdings(hub, repo, revision)}") from e
        try:
            check_config(raw, f"{name}: {CONFIG}")
        except CheckpointError as e:
            raise CheckpointError(f"{e}; {name} holds {_holdings(hub, repo, revision)}") from None
        check(raw, f"{name}: {CONFIG}")  # every section, as the loader reads it
        hub.hf_hub_download(repo, WEIGHTS, revision=config.parent.name)  # the snapshot folder is the commit
    except CheckpointError:
        raise
    except Exception as e:  # huggingface_hub's and httpx's errors, told apart in _explain
        raise CheckpointError(_explain(hub, e, name, repo, revision)) from e
    return config.parent


def _explain(hub, error: Exception, name: str, repo: str, revision: str | None) -> str:
    """One line for a failed download, naming the repository and what to do."""
    from huggingface_hub import constants, errors

    if isinstance(error, errors.GatedRepoError):
        return (f"{name}: a gated repository; ask for access on its page (https://huggingface.co/{repo}), then log "
                "in (hf auth login, or set HF_TOKEN)")
    if isinstance(error, errors.RepositoryNotFoundError):
        return (f"{name}: no such repository, or a private one that needs a token with access "
                "(hf auth login, or set HF_TOKEN)")
    if isinstance(error, errors.RevisionNotFoundError):
        return f"{name}: {repo} has no revision {revision!r} (a branch, tag or commit)"
    if isinstance(error, errors.LocalEntryNotFoundError):
        if constants.HF_HUB_OFFLINE:
            return (f"{name}: offline (HF_HUB_OFFLINE=1) and not in the cache ({constants.HF_HUB_CACHE}); "
                    "download it once online")
        cause = error.__cause__ or error.__context__
        why = f": {type(cause).__name__} {' '.join(str(cause).split())[:120]}" if cause is not None else ""
        return (f"{name}: the Hub did not answer ({constants.ENDPOINT}{why}) and the checkpoint is not in the "
                f"cache ({constants.HF_HUB_CACHE}); run again when it does")
    if isinstance(error, errors.EntryNotFoundError):
        return (f"{name}: not a specmae checkpoint (expected {CONFIG} and {WEIGHTS}); "
                f"it holds {_holdings(hub, repo, revision)}")
    if isinstance(error, errors.HfHubHTTPError) and error.response is not None and error.response.status_code == 401:
        return f"{name}: the Hub refused the token (HTTP 401); log in again (hf auth login, or set HF_TOKEN)"
    detail = " ".join(str(error).split())[:200] or type(error).__name__
    return f"{name}: download interrupted ({detail}); run again to resume"


def _holdings(hub, repo: str, revision: str | None) -> str:
    """The files of a repository, for an error that says what it is instead of a checkpoint."""
    try:
        files = sorted(s.rfilename for s in hub.HfApi().model_info(repo, revision=revision).siblings or ())
    except Exception as e:  # the listing only adds detail to an error already being raised
        return f"files that could not be listed ({type(e).__name__})"
    if not files:
        return "no files"
    return ", ".join(files[:12]) + (f" and {len(files) - 12} more files" if len(files) > 12 else "")


def upload(folder: str | os.PathLike, repo: str, *, private: bool = False, revision: str | None = None) -> str:
    """Upload `folder` (what `specmae push --to-folder` writes) to the model repository `repo`,
    creating the repository (and the branch `revision`) when missing -> the commit's URL.

    Thin on purpose: huggingface_hub creates, authenticates and uploads."""
    api = huggingface_hub(f"{PREFIX}{repo}").HfApi()
    api.create_repo(repo, private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo, branch=revision, exist_ok=True)
    commit = api.upload_folder(repo_id=repo, folder_path=str(folder), revision=revision,
                               commit_message="Upload specmae checkpoint")
    return commit.commit_url
