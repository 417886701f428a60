"""The CLI: argument parsing, exit codes, listing commands, and `run` end to end in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mxlab.cli import EXIT_CANCELLED, EXIT_OK, EXIT_USAGE, build_parser, main, recipe_from_args

REPO = Path(__file__).resolve().parents[1]


def mxlab_cli(*args: str, cwd: Path = REPO, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run `python -m mxlab ARGS` as a user would, from the repository root."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1")
    return subprocess.run([sys.executable, "-m", "mxlab", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


# ------------------------------------------------------------------------------------ parsing
def test_flags_make_the_recipe():
    r = recipe_from_args(parse("run", "--weights", "mxint3", "--acts", "int8", "--block-size", "16",
                               "--rounding", "even", "--steps", "awq,gptq", "--calib", "wikitext2",
                               "--calib-samples", "8", "--calib-seq-len", "64"))
    assert (r.weights, r.acts, r.block_size, r.rounding) == ("mxint3", "int8", 16, "even")
    assert [s.name for s in r.steps] == ["awq", "gptq"]
    assert (r.calib.dataset, r.calib.n_samples, r.calib.seq_len) == ("wikitext2", 8, 64)


def test_defaults_are_the_recipe_defaults():
    from mxlab.recipe import Recipe

    assert recipe_from_args(parse("run")).to_dict() == Recipe().to_dict()


def test_preset_with_calib_override():
    from mxlab.presets import PRESETS

    name = next(iter(PRESETS))
    r = recipe_from_args(parse("run", "--preset", name, "--calib-samples", "4"))
    assert r.calib.n_samples == 4
    assert [s.name for s in r.steps] == [s.name for s in PRESETS[name].steps]


def test_recipe_file_round_trip(tmp_path):
    from mxlab.recipe import Recipe

    src = Recipe.from_dict(dict(Recipe().to_dict(), weights="mxfp4", steps=[{"name": "gptq"}]))
    path = tmp_path / "r.yaml"
    path.write_text(src.to_yaml())
    assert recipe_from_args(parse("run", "--recipe", str(path))).to_dict() == src.to_dict()


@pytest.mark.parametrize("argv, message", [
    (["run", "--preset", "x", "--weights", "mxint4"], "cannot be combined"),
    (["run", "--recipe", "a.yaml", "--preset", "b"], "not both"),
    (["run", "--recipe", "/nonexistent/r.yaml"], "does not exist"),
    (["run", "--weights", "mxint5", "--out", "/nonexistent-dir-never-written"], "mxint5"),
    (["run", "--preset", "no-such-preset"], "no-such-preset"),
    (["report", "/nonexistent/run"], "results.json"),
    (["eval", "--model", "/nonexistent/model"], "/nonexistent/model"),
])
def test_user_errors_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("mxlab ")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err


def test_recipe_file_not_utf8_exits_2_with_one_line(tmp_path, capsys):
    """The CLI reads --recipe through Recipe.load: a Latin-1 byte is a user error, not a bug."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"weights: mxint4  # caf\xe9\n")
    assert main(["run", "--recipe", str(path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mxlab run: error: ")
    assert str(path) in err and "UTF-8" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["run", "--block-size", "0"], ["run", "--block-size", "x"],
                                  ["run", "--rounding", "up"], ["frobnicate"], ["run", "--nope"]])
def test_bad_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == EXIT_USAGE
    assert "usage: python -m mxlab" in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == EXIT_USAGE
    assert "examples:" in capsys.readouterr().err


def test_cancel_and_ctrl_c_exit_130(monkeypatch, capsys):
    import mxlab.cli as cli
    from mxlab.errors import Cancelled

    for exc in (Cancelled("user stop"), KeyboardInterrupt()):
        def boom(args, exc=exc):
            raise exc
        monkeypatch.setitem(cli.COMMANDS, "presets", boom)
        assert main(["presets"]) == EXIT_CANCELLED
        assert "cancelled" in capsys.readouterr().err


def test_unexpected_error_exits_1_with_traceback(monkeypatch, capsys):
    import mxlab.cli as cli

    def bug(args):
        raise ZeroDivisionError("bug")
    monkeypatch.setitem(cli.COMMANDS, "presets", bug)
    assert main(["presets"]) == 1
    assert "ZeroDivisionError" in capsys.readouterr().err


# ---------------------------------------------------------------------------- listing commands
def test_presets_lists_every_preset(capsys):
    from mxlab.presets import PRESETS

    assert main(["presets"]) == EXIT_OK
    out = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in out] == list(PRESETS)


def test_presets_show_is_loadable_yaml(capsys):
    from mxlab.presets import PRESETS
    from mxlab.recipe import Recipe

    name = next(iter(PRESETS))
    assert main(["presets", "--show", name]) == EXIT_OK
    assert Recipe.from_yaml(capsys.readouterr().out).to_dict() == PRESETS[name].to_dict()


def test_formats_table_numbers(capsys):
    assert main(["formats"]) == EXIT_OK
    rows = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()[1:]}
    # MX: element bits + 8 scale bits per 32 elements
    assert "4.250" in rows["mxint4"] and "8.250" in rows["mxint8"] and "4.250" in rows["mxfp4_e2m1"]
    assert "3.250" in rows["mxint3"] and "6.250" in rows["mxfp6_e3m2"]
    assert {"int8", "int4", "int3", "nvfp4", "none"} <= set(rows)


def test_help_teaches(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for word in ("--weights", "--preset", "--recipe", "examples:", "results.json", "load_quantized"):
        assert word in out


# ------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_run_end_to_end_subprocess(tmp_path, capsys):
    out = tmp_path / "run"
    proc = mxlab_cli("-q", "run", "--weights", "mxint4", "--acts", "mxint8", "--block-size", "32",
                     "--steps", "awq,gptq", "--calib", "tinystories", "--calib-samples", "4",
                     "--calib-seq-len", "64", "--eval", "tinystories", "--max-eval-windows", "2",
                     "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    m = results["metrics"]
    assert 1.0 < m["ppl_fp"] < 100 and 1.0 < m["ppl_quant"] < 1000
    assert m["ppl_quant"] >= m["ppl_fp"] * 0.98  # 4-bit weights do not beat FP by luck on 2 windows
    assert 0 <= m["kl"] and 0 <= m["top1"] <= 1
    assert 4.25 <= m["bits_per_weight"] < 4.4  # stories260K's down_proj (in 172) pads to 6 blocks of 32
    assert [s["name"] for s in results["recipe"]["steps"]] == ["awq", "gptq"]
    assert results["records"]
    assert json.loads(proc.stdout)["ppl_quant"] == pytest.approx(m["ppl_quant"])
    for name in ("recipe.yaml", "records.csv", "report.html", "model/model.safetensors", "model/config.json"):
        assert (out / name).is_file(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers

    capsys.readouterr()
    assert main(["-q", "run", "--out", str(out)]) == EXIT_USAGE  # refuses to replace it silently
    assert "--overwrite" in capsys.readouterr().err

    assert main(["-q", "eval", "--model", str(out / "model"), "--max-eval-windows", "2", "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["ppl"] == pytest.approx(m["ppl_quant"], rel=1e-9)


def test_taken_out_path_exits_2_before_any_work(tmp_path, capsys, monkeypatch):
    import mxlab.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model for a run it must refuse"))
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "results.json").write_text("{}")
    for out, message in ((tmp_path / "a-file", "is a file"), (tmp_path / "full", "already exists")):
        assert main(["run", "--steps", "rtn", "--out", str(out)]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
