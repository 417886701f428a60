"""Perplexity (the GPTQ/AWQ protocol) and agreement of a quantized model with its FP reference.

Protocol: tokenize the evaluation text once, cut it into non-overlapping windows of `seq_len`
tokens (the last partial window is dropped), run each window independently, and report
exp(mean NLL over every predicted token) -- positions 1..L-1 of every window.
"""
from __future__ import annotations

import contextlib
import logging
import math

import torch
import torch.nn.functional as F

from .errors import MxlabError
from .data import evaluation_tokens
from .limits import check_max, short
from .placement import same_device, streamed_blocks
from .progress import ProgressFn, report

log = logging.getLogger(__name__)

MAX_DEFAULT_SEQ_LEN = 2048
_LOGITS_BUDGET = 2**28  # float32 logit elements per batch (1 GiB): big vocabularies get smaller batches


def model_context(model) -> int | None:
    """The model's maximum context length from its config, if it says."""
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def default_seq_len(model) -> int:
    """The model's context, at most 2048 (the GPTQ/AWQ evaluation length)."""
    ctx = model_context(model)
    return min(ctx, MAX_DEFAULT_SEQ_LEN) if ctx else MAX_DEFAULT_SEQ_LEN


def make_windows(tokens: torch.Tensor, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """(T,) -> (n, seq_len) non-overlapping windows, the last partial window dropped."""
    tokens = tokens.reshape(-1)
    n = tokens.numel() // seq_len
    if max_windows is not None:
        if isinstance(max_windows, bool) or not isinstance(max_windows, int) or max_windows < 1:
            raise MxlabError(f"max_windows must be a positive whole number of windows (None: all), "
                             f"got {short(max_windows)}")
        n = min(n, int(max_windows))
    if n < 1:
        raise MxlabError(f"the evaluation text has {tokens.numel()} tokens, fewer than one window of {seq_len}; "
                         "use a longer text or a smaller seq_len")
    return tokens[: n * seq_len].view(n, seq_len)


def _device(model) -> torch.device:
    """Where the model's inputs go: its input embedding's device (blocks may be streamed from elsewhere)."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return emb.weight.device if emb is not None else next(model.parameters()).device


@contextlib.contextmanager
def _placed(model, device):
    """Run on ``device``: as it is when the model is there, else streaming its decoder blocks there."""
    if model is None or device is None or same_device(_device(model), device):
        yield
        return
    with streamed_blocks(model, device):
        yield


def _check_seq_len(model, seq_len: int | None) -> int:
    if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, int)):
        raise MxlabError(f"seq_len must be a whole number of tokens, got {short(seq_len)}")
    seq_len = seq_len or default_seq_len(model)
    check_max(seq_len, "eval seq_len", "evaluation seq_len")
    ctx = model_context(model)
    if seq_len < 2:
        raise MxlabError(f"seq_len must be at least 2 (got {seq_len})")
    if ctx is not None and seq_len > ctx:
        raise MxlabError(f"seq_len={seq_len} is longer than the model's context ({ctx}); use seq_len <= {ctx}")
    return seq_len


def _log_probs(model, batch: torch.Tensor) -> torch.Tensor:
    """(B, L) tokens -> (B, L-1, V) float32 log-probabilities of the next token."""
    logits = model(input_ids=batch.to(_device(model)), use_cache=False).logits  # (B, L, V)
    return F.log_softmax(logits[:, :-1].float(), dim=-1)


def _run(model, windows: torch.Tensor, batch_size: int, reference, progress: ProgressFn | None,
         device=None) -> dict:
    with _placed(model, device), _placed(reference, device):
        return _run_placed(model, windows, batch_size, reference, progress)


def _run_placed(model, windows: torch.Tensor, batch_size: int, reference, progress: ProgressFn | None) -> dict:
    """Sum the NLL (and KL / top-1 matches against `reference`) over all windows."""
    n, seq_len = windows.shape
    vocab = getattr(model.config, "vocab_size", None) or 1
    bs = max(1, min(batch_size, _LOGITS_BUDGET // (seq_len * vocab)))
    nll, kl, top1 = 0.0, 0.0, 0
    with torch.inference_mode():
        for start in range(0, n, bs):
            batch = windows[start:start + bs]
            logp = _log_probs(model, batch)  # (B, L-1, V)
            target = batch[:, 1:].to(logp.device)  # (B, L-1)
            nll += -logp.gather(-1, target.unsqueeze(-1)).sum().item()
            if reference is not None:
                ref = _log_probs(reference, batch).to(logp.device)  # (B, L-1, V)
                # KL(P_fp || P_q) = sum_v p_fp (log p_fp - log p_q), summed here over positions
                kl += F.kl_div(logp, ref, log_target=True, reduction="sum").item()
                top1 += (logp.argmax(-1) == ref.argmax(-1)).sum().item()
            done = min(start + bs, n)
            report(progress, done / n, f"evaluated {done}/{n} windows of {seq_len} tokens")
    count = n * (seq_len - 1)
    out = dict(ppl=math.exp(nll / count), nll=nll / count, n_tokens=count, n_windows=n, seq_len=seq_len)
    if reference is not None:
        out.update(kl=kl / count, top1=top1 / count)
    return out


def perplexity(model, tokens: torch.Tensor, seq_len: int | None = None, batch_size: int = 8,
               progress: ProgressFn | None = None, device=None) -> float:
    """Perplexity of `model` on a once-tokenized text (T,), non-overlapping windows of `seq_len`."""
    windows = make_windows(tokens, _check_seq_len(model, seq_len))
    return _run(model, windows, batch_size, None, progress, device)["ppl"]


def evaluate_model(model, tokenizer, source, *, reference=None, seq_len: int | None = None,
                   max_windows: int | None = None, batch_size: int = 8, progress: ProgressFn | None = None,
                   device=None) -> dict:
    """Perplexity on `source` (dataset name, text file or a (T,) token tensor), plus KL/top-1 vs `reference`.

    ``device``: run there; a model (or reference) kept elsewhere, e.g. on the CPU because it is larger
    than the accelerator allows, streams its decoder blocks there one at a time (``mxlab.placement``).

    Returns dict(ppl, nll, n_tokens (predicted tokens), n_windows, seq_len) and, with a reference
    (the FP model), kl = mean KL(P_ref || P_model) in nats per token and top1 = fraction of
    positions where both models' most likely next token agree.
    """
    seq_len = _check_seq_len(model, seq_len)
    tokens = source if isinstance(source, torch.Tensor) else evaluation_tokens(tokenizer, source)
    windows = make_windows(tokens, seq_len, max_windows)
    result = _run(model, windows, batch_size, reference, progress, device)
    log.info("%s: ppl %.4f over %d windows of %d tokens%s", source if isinstance(source, str) else "tokens",
             result["ppl"], result["n_windows"], seq_len,
             f", KL {result['kl']:.4g}, top-1 {result['top1']:.4f}" if reference is not None else "")
    return result
