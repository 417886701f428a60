"""The embedded tokenizer against llama2.c's encoder, reimplemented here from run.c as the reference."""
from __future__ import annotations

import struct

import pytest

from conftest import SHARED

TOK_BIN = SHARED / "data" / "stories260K" / "tok512.bin"

pytestmark = pytest.mark.skipif(not TOK_BIN.is_file(), reason="needs ../shared/data/stories260K/tok512.bin")


def read_tok_bin(path, vocab_size=512):
    """tok512.bin -> (pieces as bytes, scores), straight from the file."""
    raw = path.read_bytes()
    pos, pieces, scores = 4, [], []
    for _ in range(vocab_size):
        score, n = struct.unpack("<fi", raw[pos:pos + 8])
        pieces.append(raw[pos + 8:pos + 8 + n])
        scores.append(score)
        pos += 8 + n
    return pieces, scores


def llama2c_encode(text: str, pieces: list[bytes], scores: list[float]) -> list[int]:
    """run.c `encode(t, text, bos=1, eos=0)`: BOS, dummy prefix, per-codepoint lookup, byte fallback,
    then repeatedly merge the adjacent pair whose concatenation has the highest score (leftmost on ties)."""
    lookup = {p: i for i, p in enumerate(pieces)}
    tokens = [1]
    if text:
        tokens.append(lookup[b" "])
    data = text.encode("utf-8")
    i = 0
    while i < len(data):
        j = i + 1
        while j < len(data) and (data[j] & 0xC0) == 0x80 and j - i < 4:  # continuation bytes
            j += 1
        char = data[i:j]
        if char in lookup:
            tokens.append(lookup[char])
        else:
            tokens.extend(b + 3 for b in char)  # <0x00> is token 3
        i = j
    while True:
        best_score, best_id, best_idx = -1e10, -1, -1
        for k in range(len(tokens) - 1):
            merged = lookup.get(pieces[tokens[k]] + pieces[tokens[k + 1]], -1)
            if merged != -1 and scores[merged] > best_score:
                best_score, best_id, best_idx = scores[merged], merged, k
        if best_idx == -1:
            return tokens
        tokens[best_idx:best_idx + 2] = [best_id]


@pytest.fixture(scope="module")
def reference():
    return read_tok_bin(TOK_BIN)


TEXTS = [
    "Once upon a time, there was a little girl named Lily.",
    "Hello world",
    " Spot. Spot saw the shiny car and said, \"Wow, Kitty!\"",
    "Two  spaces,\ttab and\nnewline\n\nparagraph.",
    "Tom's dog didn\u2019t bark at 1,234 birds (or 56?).",
    "na\u00efve caf\u00e9, \u65e5\u672c\u8a9e, emoji \U0001F600 and mojibake \u00e2\u20ac\u2122.",
    "x",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_llama2c(embedded, reference, text):
    _, tokenizer = embedded
    assert tokenizer(text)["input_ids"] == llama2c_encode(text, *reference)


def test_encode_matches_llama2c_on_stories(embedded, reference):
    _, tokenizer = embedded
    from mxlab.data import _stories, load_text

    stories = _stories(load_text("tinystories", "eval"))[:6]
    for story in stories:
        assert tokenizer(story)["input_ids"] == llama2c_encode(story, *reference)


def test_byte_fallback_and_decode_round_trip(embedded):
    _, tokenizer = embedded
    text = "caf\u00e9 \U0001F600"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids)[-4:] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    for t in TEXTS:
        assert tokenizer.decode(tokenizer(t)["input_ids"], skip_special_tokens=True) == t


def test_special_tokens(embedded):
    _, tokenizer = embedded
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (1, 2, 0)
    assert len(tokenizer) == 512
