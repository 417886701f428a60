"""Embedded texts, their splits and licenses, local files, hub datasets offline, calibration windows."""
from __future__ import annotations

import hashlib

import pytest
import torch

from mxlab import data
from mxlab.errors import MxlabError

SHA256 = {  # the standard files, unchanged (see assets/texts/SOURCES.md)
    "wikitext2/wiki.test.raw": "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
    "tinystories/valid_head.txt": "fa062c1a24a879aa57f596d4d80cbbbf90415aedfa6574a4950749a53d6ea164",
}


def test_assets_are_the_documented_files():
    for rel, digest in SHA256.items():
        assert hashlib.sha256((data.TEXTS_DIR / rel).read_bytes()).hexdigest() == digest
    sources = (data.TEXTS_DIR / "SOURCES.md").read_text()
    for needle in ("CDLA-Sharing-1.0", "CC BY-SA 3.0", "public domain", "wiki.valid.tokens"):
        assert needle in sources


def test_tinystories_eval_is_269_stories_each_after_a_bos(embedded):
    _, tok = embedded
    stories = data._stories(data.load_text("tinystories", "eval"))
    assert len(stories) == 269 and stories[0].startswith("Spot. Spot saw")
    ids = data.evaluation_tokens(tok, "tinystories")
    starts = (ids == tok.bos_token_id).nonzero().flatten().tolist()
    assert len(starts) == 269 and starts[0] == 0
    # the second story decodes back exactly, BOS to BOS
    assert tok.decode(ids[starts[1] + 1:starts[2]]) == stories[1]


def test_wikitext2_eval_joins_hf_rows_with_blank_lines(embedded):
    _, tok = embedded
    text = data.load_text("wikitext2", "eval")
    raw = (data.TEXTS_DIR / "wikitext2/wiki.test.raw").read_text()
    # HF rows: "" for a blank line, the line with its "\n" otherwise; joined by "\n\n" (GPTQ/AWQ)
    assert text.startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is")
    lines = raw.splitlines(keepends=True)
    assert len(lines) == 4358  # the HF test split's row count
    assert len(text) == sum(len(l) for l in lines if l.strip()) + 2 * (len(lines) - 1)
    ids = data.evaluation_tokens(tok, "wikitext2")
    assert ids[0] == tok.bos_token_id and (ids == tok.bos_token_id).sum() == 1  # tokenized once


def test_splits_differ_and_shakespeare_is_split_90_10():
    for name in data.DATASETS:
        assert data.load_text(name, "eval") != data.load_text(name, "calib")
    full = (data.TEXTS_DIR / "shakespeare/input.txt").read_text()
    calib, ev = data.load_text("shakespeare", "calib"), data.load_text("shakespeare", "eval")
    assert calib + ev == full and len(calib) == int(0.9 * len(full))
    assert "<unk>" in data.load_text("wikitext2", "calib")  # the tokenized validation split, as documented


def test_calibration_windows_are_seeded_slices(embedded):
    _, tok = embedded
    a = data.calibration_batches(tok, "tinystories", n_samples=6, seq_len=64, seed=3)
    b = data.calibration_batches(tok, "tinystories", n_samples=6, seq_len=64, seed=3)
    c = data.calibration_batches(tok, "tinystories", n_samples=6, seq_len=64, seed=4)
    assert a.shape == (6, 64) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    stream = torch.tensor(tok(data.load_text("tinystories", "calib"), verbose=False)["input_ids"])
    g = torch.Generator().manual_seed(3)
    starts = torch.randint(0, stream.numel() - 64 + 1, (6,), generator=g)
    for row, s in zip(a, starts.tolist()):
        assert torch.equal(row, stream[s:s + 64])


def test_local_text_file(embedded, tmp_path):
    _, tok = embedded
    path = tmp_path / "notes.txt"
    path.write_text("The cat sat on the mat. " * 40, encoding="utf-8")
    assert data.load_text(path, "calib") == data.load_text(str(path), "eval") == path.read_text()
    assert data.calibration_batches(tok, path, n_samples=2, seq_len=16).shape == (2, 16)
    with pytest.raises(MxlabError, match="fewer than seq_len"):
        data.calibration_batches(tok, path, n_samples=2, seq_len=100_000)
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(MxlabError, match="not UTF-8"):
        data.load_text(path)


def test_errors(monkeypatch):
    with pytest.raises(MxlabError, match="unknown text source"):
        data.load_text("no-such-set")
    with pytest.raises(MxlabError, match="unknown split"):
        data.load_text("tinystories", "train")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in data.HUB_DATASETS:
        with pytest.raises(MxlabError, match="offline|datasets"):
            data.load_text(name)
