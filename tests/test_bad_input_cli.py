"""Bad input and faults through the CLI: every user error is one line on stderr and exit 2, and nothing is
written or lost (the issue's list 6 and 7, each as a test). Runs ``mxlab.cli.main`` in-process, like
``python -m mxlab``, so the suite stays fast."""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from _faults import one_line, snapshot
from mxlab.cli import EXIT_OK, EXIT_USAGE, main

QUICK = ["--calib-samples", "2", "--calib-seq-len", "32", "--max-eval-windows", "1", "--eval-seq-len", "32"]


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``python -m mxlab -q ARGV``."""
    code = main(["-q", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def user_error(capsys, *argv: str, match: str) -> str:
    """Exit 2 and one short line on stderr that contains ``match``."""
    code, _, err = cli(capsys, *argv)
    line = one_line(err)
    assert code == EXIT_USAGE, err
    assert match in line, line
    return line


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------------------------- recipes and flags
@pytest.mark.parametrize("content, match", [
    (b"weights: mx\xffint4\n", "not UTF-8"),
    (b"a: &a [1, 2]\nb: [*a, *a]\n", "anchors/aliases"),
    (b"steps: [{name: awq, n_grid: 1000000000}]\n", "exceeds the limit 1000"),
    (b"block_size: 1e12\n", "positive integer"),
    (b"block_size: 1000000000000\n", "exceeds the limit 4096"),
    (b"calib: {n_samples: 1000000000}\n", "exceeds the limit 4096"),
    (b"seed: 1000000000000000000000000\n", "seed"),
    (b"weights: [mxint4\nacts: : :\n", "not valid YAML"),
    (b"weights: " + b"y" * 60000 + b"\n", "not a format name"),
    (b"# pad\n" * 20000, "over the limit"),
])
def test_bad_recipe_files(capsys, work, content, match):
    (work / "r.yaml").write_bytes(content)
    before = snapshot(work)
    line = user_error(capsys, "run", "--recipe", "r.yaml", "--out", "out", match=match)
    assert "y" * 50 not in line
    assert snapshot(work) == before


@pytest.mark.parametrize("argv, match", [
    (["--calib-samples", "100000000"], "exceeds the limit 4096"),
    (["--calib-seq-len", "100000000"], "exceeds the limit 32768"),
    (["--block-size", "1000000000000"], "exceeds the limit 4096"),
    (["--device", "foo"], "unknown device 'foo'"),
    (["--device", "meta"], "cannot run a model"),
    (["--device", "cuda:7"], "cuda"),
    (["--steps", "awq,gptq,awq"], "appears twice"),
    (["--weights", "mxint5"], "unknown number format"),
])
def test_bad_run_flags(capsys, work, argv, match):
    user_error(capsys, "run", *argv, "--out", "out", match=match)
    assert snapshot(work) == {}


def test_existing_output_is_kept(capsys, work):
    (work / "out").mkdir()
    (work / "out" / "mine.txt").write_text("precious")
    before = snapshot(work)
    user_error(capsys, "run", "--out", "out", *QUICK, match="already exists")
    assert snapshot(work) == before


# ---------------------------------------------------------------------------------- report
def test_report_on_results_holding_a_list(capsys, work):
    (work / "results.json").write_text("[]")
    user_error(capsys, "report", ".", match="not an mxlab results file")
    assert snapshot(work) == {"results.json": snapshot(work)["results.json"]}


def test_report_output_on_a_read_only_directory(capsys, work, monkeypatch):
    (work / "results.json").write_text(json.dumps({"metrics": {}, "recipe": {}}))
    ro = work / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:   # root ignores modes: the write itself fails as on a read-only filesystem
        import errno

        import mxlab.rundir as rundir

        def erofs(results, path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        monkeypatch.setattr(rundir, "write_report_from_results", erofs, raising=False)
        monkeypatch.setattr("mxlab.report.write_report_from_results", erofs)
    try:
        line = user_error(capsys, "report", ".", "--output", str(ro / "r.html"), match="could not write")
        assert list(ro.iterdir()) == [], line
    finally:
        ro.chmod(0o755)


# ---------------------------------------------------------------------------------- source checkpoints
@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """The embedded model saved as a plain HF directory (safetensors)."""
    from mxlab.models import DEFAULT_MODEL_DIR

    d = tmp_path_factory.mktemp("hf") / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, d)
    return d


def test_truncated_source_checkpoint(capsys, work, hf_dir):
    d = work / "trunc"
    shutil.copytree(hf_dir, d)
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    user_error(capsys, "eval", "--model", str(d), "--max-eval-windows", "1", match="cannot load the weights")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_pickle_under_allow_pickle_is_refused_and_does_not_run(capsys, work, hf_dir):
    d = work / "evil"
    shutil.copytree(hf_dir, d)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(pickle.dumps({"x": _Evil()}))
    user_error(capsys, "eval", "--model", str(d), "--allow-pickle", "--max-eval-windows", "1",
               match="objects other than tensors")
    assert not (work / "pwned").exists()


def test_pickle_without_allow_pickle(capsys, work, hf_dir):
    d = work / "pick"
    shutil.copytree(hf_dir, d)
    (d / "model.safetensors").unlink()
    torch.save({}, d / "pytorch_model.bin")
    user_error(capsys, "eval", "--model", str(d), match="allow_pickle")


# ---------------------------------------------------------------------------------- packed exports
@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A packed W-MXINT4 export of the embedded model."""
    from mxlab.checkpoint import save_quantized
    from mxlab.models import load_model
    from mxlab.ptq.pipeline import quantize_model
    from mxlab.recipe import Recipe

    model, tok = load_model()
    calib = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    result = quantize_model(model, tok, Recipe(weights="mxint4", acts="mxint8"), calib_tokens=calib)
    d = tmp_path_factory.mktemp("packed") / "model"
    save_quantized(result, tok, d)
    return d


def _edited(work: Path, packed: Path, edit) -> Path:
    d = work / "ckpt"
    shutil.copytree(packed, d)
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg["quantization_config"])
    (d / "config.json").write_text(json.dumps(cfg))
    return d


EVAL = ["--max-eval-windows", "1", "--eval-seq-len", "32"]


def _first_module(qc):
    return qc["modules"][next(iter(qc["modules"]))]


@pytest.mark.parametrize("edit, match", [
    (lambda qc: qc.update(version="abc"), "is not a format version"),
    (lambda qc: qc.update(version=99), "newer mxlab"),
    (lambda qc: qc.pop("weights_sha256"), "has no weights_sha256"),
    (lambda qc: qc.update(weights_sha256="0" * 64), "sha256 differs"),
    (lambda qc: qc.update(weights_sha256=["x"] * 1000), "malformed weights_sha256"),
    (lambda qc: _first_module(qc).update(block_size="x"), "block_size 'x'"),
    (lambda qc: _first_module(qc).update(block_size=10**15), "block_size"),
    (lambda qc: _first_module(qc).update(weights=["a"] * 10000), "not a name"),
    (lambda qc: qc.update(modules={"model": _first_module(qc)}), "not a Linear"),
])
def test_edited_export_configs_are_refused(capsys, work, packed, edit, match):
    d = _edited(work, packed, edit)
    before = snapshot(work)
    user_error(capsys, "eval", "--model", str(d), *EVAL, match=match)
    assert snapshot(work) == before


def test_block_size_that_disagrees_with_the_stored_weights_is_refused_even_unverified(capsys, work, packed):
    d = _edited(work, packed, lambda qc: _first_module(qc).update(block_size=16))
    user_error(capsys, "eval", "--model", str(d), "--no-verify", *EVAL, match="written with 32")


def test_header_shape_that_disagrees_is_refused(capsys, work, packed, monkeypatch):
    import mxlab.checkpoint as ck

    d = work / "ckpt"
    shutil.copytree(packed, d)
    real = ck._read_weights

    def lying_header(directory, qc, verify):
        tensors, extra = real(directory, qc, verify)
        name = next(iter(extra["packed"]))
        extra["packed"][name]["shape"] = "[3, 7]"
        return tensors, extra
    monkeypatch.setattr(ck, "_read_weights", lying_header)
    user_error(capsys, "eval", "--model", str(d), *EVAL, match="has shape [3, 7] in its header")


def test_tampered_scales_are_refused_and_no_verify_is_explicit(capsys, work, packed):
    d = work / "ckpt"
    shutil.copytree(packed, d)
    raw = bytearray((d / "model.safetensors").read_bytes())
    raw[-100] ^= 0xFF                                           # flip bits inside the tensor data
    (d / "model.safetensors").write_bytes(bytes(raw))
    user_error(capsys, "eval", "--model", str(d), *EVAL, match="sha256 differs")


def test_missing_digest_loads_only_with_no_verify(capsys, work, packed):
    d = _edited(work, packed, lambda qc: qc.pop("weights_sha256"))
    code, out, err = cli(capsys, "eval", "--model", str(d), "--no-verify", "--json", *EVAL)
    assert code == EXIT_OK, err
    assert json.loads(out)["ppl"] > 1


def test_nan_in_a_stored_tensor_is_refused_unverified(capsys, work, packed):
    from safetensors import safe_open
    from safetensors.torch import save_file

    d = work / "ckpt"
    shutil.copytree(packed, d)
    path = d / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    name = next(k for k in tensors if k.endswith("norm.weight"))
    tensors[name][0] = float("nan")
    save_file(tensors, str(path), metadata=meta)
    user_error(capsys, "eval", "--model", str(d), "--no-verify", *EVAL, match=name)


# ---------------------------------------------------------------------------------- faults while writing
def test_disk_full_while_the_model_is_written(capsys, work, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*a, **k):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    user_error(capsys, "run", "--out", "out", *QUICK, match="could not write")
    assert snapshot(work) == {}


def test_inf_in_the_model_stops_the_run_with_the_tensor_name(capsys, work, hf_dir):
    from safetensors.torch import load_file, save_file

    d = work / "inf"
    shutil.copytree(hf_dir, d)
    tensors = load_file(str(d / "model.safetensors"))
    name = next(k for k in tensors if "embed_tokens" in k)
    tensors[name][1, 2] = float("inf")
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    before = snapshot(work)
    user_error(capsys, "run", "--model", str(d), "--out", "out", *QUICK, match=name)
    assert snapshot(work) == before
