"""Calibration and evaluation texts: embedded sets (assets/texts), local files, hub datasets when online.

Embedded sets and their splits (sources and licenses: assets/texts/SOURCES.md):
- ``tinystories``: calib = head of the train split; eval = head of the held-out validation split,
  stories separated by ``<|endoftext|>`` lines (each story gets a BOS token, as in training).
- ``wikitext2``: eval = the raw test split (``wiki.test.raw``, the standard file); calib = the
  validation split, which is only available here in its *tokenized* form (``wiki.valid.tokens``:
  word-level, ``<unk>`` substituted); the raw train split is not shipped.
- ``shakespeare``: tiny-shakespeare, calib = first 90%, eval = last 10% (nanoGPT's split).
Hub datasets (need the ``datasets`` package and network): ``wikitext-2-raw-v1`` and ``c4``.
"""
from __future__ import annotations

import logging
import os
import weakref
from pathlib import Path

import torch

from .errors import MxlabError
from .models import hub_reachable

log = logging.getLogger(__name__)

TEXTS_DIR = Path(__file__).resolve().parents[1] / "assets" / "texts"
DATASETS = ("tinystories", "wikitext2", "shakespeare")
HUB_DATASETS = ("wikitext-2-raw-v1", "c4")
SPLITS = ("eval", "calib")
STORY_SEPARATOR = "<|endoftext|>"

_FILES = {
    ("tinystories", "eval"): "tinystories/valid_head.txt",
    ("tinystories", "calib"): "tinystories/train_head.txt",
    ("wikitext2", "eval"): "wikitext2/wiki.test.raw",
    ("wikitext2", "calib"): "wikitext2/wiki.valid.tokens",
    ("shakespeare", "eval"): "shakespeare/input.txt",
    ("shakespeare", "calib"): "shakespeare/input.txt",
}


def _read(relpath: str) -> str:
    path = TEXTS_DIR / relpath
    if not path.is_file():
        raise MxlabError(f"embedded text {path} is missing; reinstall mxlab")
    return path.read_text(encoding="utf-8")


def _wikitext_join(raw: str) -> str:
    """The HF dataset's rows (blank lines -> ""), joined with "\\n\\n" as GPTQ/AWQ evaluate it."""
    rows = [line if line.strip() else "" for line in raw.splitlines(keepends=True)]
    return "\n\n".join(rows)


def _stories(text: str) -> list[str]:
    """TinyStories validation text -> stripped stories (the separator lines removed)."""
    return [s.strip() for s in text.split(STORY_SEPARATOR) if s.strip()]


def _hub_text(name: str, split: str) -> str:
    """WikiText-2 / C4 from the hub, the way GPTQ's datautils builds them."""
    try:
        import datasets
    except ImportError as e:
        raise MxlabError(f"dataset {name!r} needs the 'datasets' package (pip install datasets) and network; "
                         f"offline, use one of the embedded sets {DATASETS} or a local text file") from e
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or \
            os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise MxlabError(f"dataset {name!r} must be downloaded, but offline mode is on (HF_HUB_OFFLINE); use one of "
                         f"the embedded sets {DATASETS} or a local text file")
    if not hub_reachable():
        raise MxlabError(f"dataset {name!r} must be downloaded, but the Hugging Face hub cannot be reached (no "
                         f"network); use one of the embedded sets {DATASETS} or a local text file")
    try:
        if name == "wikitext-2-raw-v1":
            rows = datasets.load_dataset("wikitext", name, split="test" if split == "eval" else "train")
            return "\n\n".join(rows["text"])
        if split == "eval":  # GPTQ: the first 1100 documents of the first validation shard, joined by " "
            rows = datasets.load_dataset("allenai/c4", data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"},
                                         split="validation")
            return " ".join(rows[:1100]["text"])
        rows = datasets.load_dataset("allenai/c4", data_files={"train": "en/c4-train.00000-of-01024.json.gz"},
                                     split="train")
        return "\n\n".join(rows[:5000]["text"])
    except Exception as e:  # network / hub errors come in many types
        raise MxlabError(f"could not download dataset {name!r} ({type(e).__name__}: {e}); offline, use one of the "
                         f"embedded sets {DATASETS} or a local text file") from e


def load_text(name_or_path: str | os.PathLike, split: str = "eval") -> str:
    """The text of an embedded set, a hub dataset or a local UTF-8 file (the whole file for both splits)."""
    if split not in SPLITS:
        raise MxlabError(f"unknown split {split!r}; use one of {SPLITS}")
    name = str(name_or_path)
    if name in DATASETS:
        text = _read(_FILES[(name, split)])
        if name == "shakespeare":
            cut = int(len(text) * 0.9)
            return text[cut:] if split == "eval" else text[:cut]
        if name == "wikitext2":
            return _wikitext_join(text)
        return text
    if name in HUB_DATASETS:
        return _hub_text(name, split)
    path = Path(name).expanduser()
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise MxlabError(f"{path} is not UTF-8 text; give a plain text file") from e
    raise MxlabError(f"unknown text source {name!r}: use one of {DATASETS}, a hub dataset {HUB_DATASETS} "
                     "(online only) or the path of a local text file")


def _tokenize(tokenizer, text: str, add_special_tokens: bool = True) -> list[int]:
    # verbose=False: long texts exceed model_max_length on purpose (we window them ourselves)
    return tokenizer(text, add_special_tokens=add_special_tokens, verbose=False)["input_ids"]


def _doc_start_id(tokenizer) -> int | None:
    """The token that starts a document: BOS, else EOS (GPT-style end-of-text separators)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def _story_tokens(tokenizer, stories: list[str]) -> torch.Tensor:
    """[start] + story tokens for each story, concatenated: llama2.c's training layout."""
    start = _doc_start_id(tokenizer)
    ids = tokenizer(stories, add_special_tokens=False, verbose=False)["input_ids"]
    flat = [t for doc in ids for t in ([start] if start is not None else []) + doc]
    return torch.tensor(flat, dtype=torch.long)


# tokenizer -> {(dataset, split): tokens}: the FP and the quantized model of a run share the
# tokenizer, so an embedded set is tokenized once per process (WikiText-2 takes seconds)
_TOKEN_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _split_tokens(tokenizer, source, split: str) -> torch.Tensor:
    key = (str(source), split)
    cached = _cached(tokenizer).get(key) if str(source) in DATASETS else None
    if cached is None:
        cached = _tokenize_split(tokenizer, source, split)
        if str(source) in DATASETS:
            _cached(tokenizer)[key] = cached
    return cached.clone()


def _cached(tokenizer) -> dict:
    try:
        return _TOKEN_CACHE.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: no caching
        return {}


def _tokenize_split(tokenizer, source, split: str) -> torch.Tensor:
    text = load_text(source, split)
    if str(source) == "tinystories" and split == "eval":
        return _story_tokens(tokenizer, _stories(text))
    return torch.tensor(_tokenize(tokenizer, text), dtype=torch.long)


def evaluation_tokens(tokenizer, source) -> torch.Tensor:
    """The evaluation text of `source`, joined and tokenized once: LongTensor (T,)."""
    return _split_tokens(tokenizer, source, "eval")


def calibration_batches(tokenizer, source, n_samples: int = 128, seq_len: int = 512, seed: int = 0) -> torch.Tensor:
    """`n_samples` random windows of `seq_len` tokens of the calibration text: LongTensor (N, L).

    The start offsets come from a torch Generator seeded with `seed`, so a recipe's calibration
    set is reproducible.
    """
    if n_samples < 1 or seq_len < 1:
        raise MxlabError(f"n_samples and seq_len must be positive (got {n_samples}, {seq_len})")
    tokens = _split_tokens(tokenizer, source, "calib")
    if tokens.numel() < seq_len:
        raise MxlabError(f"calibration text {source!r} has only {tokens.numel()} tokens, fewer than seq_len={seq_len}; "
                         "use a shorter seq_len or a longer text")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seq_len + 1, (n_samples,), generator=g)
    log.info("calibration: %d windows of %d tokens from %s (%d tokens)", n_samples, seq_len, source, tokens.numel())
    return torch.stack([tokens[s:s + seq_len] for s in starts.tolist()])
