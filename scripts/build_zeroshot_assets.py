"""Build assets/zeroshot/ from ../shared/data/zeroshot: each task's evaluation split in the schema
of the Hugging Face dataset lm-eval's task reads, gzipped (deterministic), plus a manifest of hashes.

    python scripts/build_zeroshot_assets.py [--src ../shared/data/zeroshot] [--out assets/zeroshot]

Only the shape changes (field names, label types); no text is edited. HellaSwag is llama.cpp's
preprocessed file: its first line is ``activity_label + ": " + ctx`` with the ctx_a/ctx_b split lost,
so ctx_a holds the whole context and ctx_b is empty (lm-eval's own process_docs then builds the
query; scores are close to, not identical with, lm-eval on Rowan/hellaswag).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
from pathlib import Path


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _arc(rec: dict) -> dict:
    q = rec["question"]
    return {"id": rec["id"], "question": q["stem"],
            "choices": {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]},
            "answerKey": rec["answerKey"]}


def _obqa(rec: dict) -> dict:
    q = rec["question"]
    return {"id": rec["id"], "question_stem": q["stem"],
            "choices": {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]},
            "answerKey": rec["answerKey"]}


def _hellaswag(src: Path) -> list[dict]:
    text = "".join((src / f"hellaswag/hellaswag_val_full.part{i}of3.txt").read_text(encoding="utf-8") for i in (1, 2, 3))
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    assert len(lines) % 6 == 0, len(lines)
    out = []
    for i in range(0, len(lines), 6):
        first, gold, endings = lines[i], lines[i + 1], lines[i + 2: i + 6]
        label, sep, ctx = first.partition(": ")
        if not sep:  # no activity label
            label, ctx = "", first
        out.append({"ind": i // 6, "activity_label": label, "ctx_a": ctx, "ctx_b": "", "ctx": ctx,
                    "endings": endings, "source_id": "", "split": "val", "split_type": "",
                    "label": str(int(gold))})
    return out


def build(src: Path) -> dict[str, list[dict]]:
    """Every task's records in the HF schema lm-eval reads."""
    piqa_labels = _lines(src / "piqa/valid-labels.lst")
    piqa = [{**r, "label": int(l)} for r, l in zip(_jsonl(src / "piqa/valid.jsonl"), piqa_labels, strict=True)]
    boolq = [{"question": r["question"], "passage": r["passage"], "idx": int(r["idx"]),
              "label": int(r["label"] in (True, "true", "True"))} for r in _jsonl(src / "boolq/val.jsonl")]
    wino = _jsonl(src / "winogrande/dev.jsonl")
    assert [r["answer"] for r in wino] == _lines(src / "winogrande/dev-labels.lst")
    return {
        "arc_easy": [_arc(r) for r in _jsonl(src / "arc_easy/ARC-Easy-Test.jsonl")],
        "arc_challenge": [_arc(r) for r in _jsonl(src / "arc_challenge/ARC-Challenge-Test.jsonl")],
        "piqa": piqa,
        "winogrande": [{k: r[k] for k in ("sentence", "option1", "option2", "answer")} for r in wino],
        "openbookqa": [_obqa(r) for r in _jsonl(src / "openbookqa/test.jsonl")],
        "boolq": boolq,
        "lambada_openai": _jsonl(src / "lambada_openai/lambada_test.jsonl"),
        "hellaswag": _hellaswag(src),
    }


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=root.parent / "shared/data/zeroshot")
    ap.add_argument("--out", type=Path, default=root / "assets/zeroshot")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for task, records in build(args.src).items():
        raw = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
            gz.write(raw)
        path = args.out / f"{task}.jsonl.gz"
        path.write_bytes(buf.getvalue())
        manifest[task] = {"file": path.name, "records": len(records),
                          "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}
        print(f"{task}: {len(records)} records, {path.stat().st_size} B")
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
