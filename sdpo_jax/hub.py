"""Where the model and its tokenizer come from, and whether they fit each other, decided before anything
heavy is built (set-up calls `load_checked_tokenizer`).

`model.path` / `tokenizer.path` name a local directory or a Hugging Face hub id (`owner/name`,
`is_hub_id`). A hub id is fetched with `huggingface_hub.snapshot_download` into the HF cache
(`model.revision`, `HF_TOKEN` from the environment for gated models); on a multi-process launch the first
process of each host downloads and the host's other processes wait for it. Offline (`HF_HUB_OFFLINE=1`) a
model already in the cache is used; one that is not, or a failed download, is one `SourceError` saying how
to fetch it. Every error here is a `SourceError` naming the field (one of `cli.PROJECT_ERRORS`: one `error:` line).

The vocabulary checks read `config.json` and the tokenizer files only (never the weights): the tokenizer's
largest id must have an embedding row, the model may have at most max(1,024, 1 % of vocab_size) rows
beyond the tokenizer (Qwen3 pads 151,669 tokens to 151,936 rows; a random init rounds up to a multiple of
64), and a tokenizer other than the one the model directory ships must have the same vocabulary.
"""

from __future__ import annotations

import json
import os
import re
import socket

import jax

from sdpo_jax import sharding
from sdpo_jax.tokenizer import load_tokenizer

# Any one of these makes a directory a tokenizer `AutoTokenizer.from_pretrained` can load.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
MIN_EXTRA_ROWS = 1024  # embedding rows beyond the tokenizer a model may have: max(this, 1 % of vocab_size)


class SourceError(ValueError):
    """model.path / tokenizer.path cannot be used; the message names the field and what would work."""


def is_hub_id(value: str) -> bool:
    """Whether `value` names a Hugging Face hub repository (owner/name) rather than a local path."""
    return not os.path.exists(value) and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", value) is not None


def _how_to_fetch(repo_id: str) -> str:
    return (f"fetch it on a machine with network access (`hf download {repo_id} --local-dir DIR`, huggingface_hub's "
            "CLI) and pass the local DIR instead")


def download(repo_id: str, *, field: str, revision: str | None = None, local_files_only: bool = False) -> str:
    """The local snapshot directory of hub repository `repo_id` (downloaded into the HF cache when missing;
    `HF_TOKEN` from the environment). Raises SourceError naming `field` and how to fetch it."""
    from huggingface_hub import constants, snapshot_download

    at = f"{repo_id}@{revision}" if revision else repo_id
    try:
        return snapshot_download(repo_id, revision=revision, token=os.environ.get("HF_TOKEN") or None,
                                 local_files_only=local_files_only)
    except Exception as err:  # every failure of the hub client (offline, not found, gated, network) is one line
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if constants.HF_HUB_OFFLINE:
            raise SourceError(
                f"config: {field}={repo_id!r} is no local path, and as a hub id it is not in the local HF cache "
                f"({constants.HF_HUB_CACHE}) while HF_HUB_OFFLINE=1 forbids downloading it: unset HF_HUB_OFFLINE, or "
                f"{_how_to_fetch(repo_id)}") from None
        raise SourceError(
            f"config: {field}={repo_id!r} is no local path, and downloading {at} from the Hugging Face hub failed "
            f"({type(err).__name__}: {detail}); for a gated model set HF_TOKEN, check the id and model.revision, or {_how_to_fetch(repo_id)}"
        ) from None


def _first_process_on_this_host() -> bool:
    hosts = sharding.gather_objects([socket.gethostname()])
    return hosts.index(hosts[jax.process_index()]) == jax.process_index()


def fetch(repo_id: str, *, field: str, revision: str | None = None) -> str:
    """`download` on one process; on several, the first process of each host downloads while the host's
    others wait (every process calls this, in the same order), then they read the cached snapshot. A failed
    download raises the same SourceError on every process."""
    if jax.process_count() == 1:
        return download(repo_id, field=field, revision=revision)
    first = _first_process_on_this_host()
    path, failure = None, None
    if first:
        try:
            path = download(repo_id, field=field, revision=revision)
        except SourceError as err:
            failure = str(err)
    failures = [f for f in sharding.gather_objects([failure]) if f]  # waits for every host's download
    if failures:
        raise SourceError(failures[0])
    return path or download(repo_id, field=field, revision=revision, local_files_only=True)


def local_source(field: str, value: str, *, revision: str | None = None) -> str:
    """`value` of `field` as a local directory: "demo" and existing paths as they are, hub ids fetched;
    anything else (a missing path, gs://) is a SourceError naming the field."""
    if value == "demo" and field == "tokenizer.path":
        return value
    if os.path.exists(value):
        return value
    if is_hub_id(value):
        return fetch(value, field=field, revision=revision)
    raise SourceError(
        f"config: {field}={value!r} is neither a local directory nor a hub id (owner/name, e.g. Qwen/Qwen3-0.6B)"
        + ("; copy a gs:// model to local disk first" if value.startswith("gs://") else ""))


def local_sources(model_path: str | None, tokenizer_path: str, *,
                  revision: str | None = None) -> tuple[str | None, str]:
    """(the model's local directory or None for a random init, the tokenizer's: "demo" or a local directory),
    hub ids fetched. `model.revision` applies to tokenizer.path only when it names the model's repository."""
    model_dir = local_source("model.path", model_path, revision=revision) if model_path else None
    if model_path and tokenizer_path == model_path:
        return model_dir, model_dir
    return model_dir, local_source("tokenizer.path", tokenizer_path)


def _ships_tokenizer(directory: str) -> bool:
    return any(os.path.isfile(os.path.join(directory, name)) for name in TOKENIZER_FILES)


def model_vocab_size(model_dir: str, model_path: str) -> int:
    """`vocab_size` of the model's config.json (SourceError naming model.path when it is missing)."""
    config_file = os.path.join(model_dir, "config.json")
    try:
        with open(config_file) as f:
            vocab_size = json.load(f).get("vocab_size")
    except (OSError, ValueError) as err:
        raise SourceError(
            f"config: model.path={model_path!r}: cannot read {config_file} ({err}); point to a Hugging Face model "
            "directory (config.json + safetensors)") from None
    if not isinstance(vocab_size, int):
        raise SourceError(f"config: model.path={model_path!r}: {config_file} has no integer vocab_size")
    return vocab_size


def check_vocab_sizes(largest_id: int, vocab_size: int, *, model_path: str, tokenizer_path: str) -> None:
    """SourceError naming both sizes and both fields unless every token id has an embedding row and the
    model has at most max(MIN_EXTRA_ROWS, 1 % of vocab_size) rows beyond the tokenizer."""
    where = f"tokenizer.path={tokenizer_path!r} and model.path={model_path!r}"
    fix = "leave tokenizer.path unset to use the model's own tokenizer, or pass the tokenizer it was trained with"
    if largest_id >= vocab_size:
        raise SourceError(
            f"config: {where} do not fit: the tokenizer's largest id is {largest_id} ({largest_id + 1} tokens) but "
            f"the model's vocab_size is {vocab_size}, so ids >= {vocab_size} have no embedding row; {fix}")
    extra, allowed = vocab_size - (largest_id + 1), max(MIN_EXTRA_ROWS, vocab_size // 100)
    if extra > allowed:
        raise SourceError(
            f"config: {where} do not fit: the model's vocab_size {vocab_size} has {extra} embedding rows beyond the "
            f"tokenizer's {largest_id + 1} tokens (at most max({MIN_EXTRA_ROWS}, 1 % of vocab_size) = {allowed} "
            f"is padding); {fix}")


def largest_token_id(tokenizer) -> int:
    return max(tokenizer.get_vocab().values())


def _check_shipped_tokenizer(tokenizer, model_dir: str, *, model_path: str, tokenizer_path: str) -> None:
    shipped = load_tokenizer(model_dir)
    if shipped.get_vocab() != tokenizer.get_vocab():
        raise SourceError(
            f"config: tokenizer.path={tokenizer_path!r} ({len(tokenizer)} tokens) differs from the tokenizer that "
            f"model.path={model_path!r} ships ({len(shipped)} tokens, another vocabulary); leave tokenizer.path "
            "unset to use the model's own")


def load_checked_tokenizer(model_path: str | None, tokenizer_path: str, *, revision: str | None = None,
                           defaulted: bool = False, check_vocabulary: bool = True):
    """(the model's local directory or None for a random init, the loaded tokenizer): hub ids fetched, then the
    tokenizer checked against the model's config.json and against the tokenizer the model directory ships
    when it comes from elsewhere (unless not `check_vocabulary`). `defaulted`: tokenizer.path was unset (the
    message says so). Raises
    SourceError; reads no weights."""
    model_dir, tokenizer_dir = local_sources(model_path, tokenizer_path, revision=revision)
    if tokenizer_dir != "demo" and not _ships_tokenizer(tokenizer_dir):
        raise SourceError(
            f"config: tokenizer.path={tokenizer_path!r}{' (unset: the model directory)' if defaulted else ''} holds "
            f"none of {', '.join(TOKENIZER_FILES)}; set --config.tokenizer.path to the model's tokenizer directory "
            "or hub id")
    tokenizer = load_tokenizer(tokenizer_dir)
    if model_dir is None or not check_vocabulary:
        return model_dir, tokenizer
    check_vocab_sizes(largest_token_id(tokenizer), model_vocab_size(model_dir, model_path),
                      model_path=model_path, tokenizer_path=tokenizer_path)
    if _ships_tokenizer(model_dir) and (tokenizer_dir == "demo"
                                        or os.path.realpath(tokenizer_dir) != os.path.realpath(model_dir)):
        _check_shipped_tokenizer(tokenizer, model_dir, model_path=model_path, tokenizer_path=tokenizer_path)
    return model_dir, tokenizer
