"""The `crucible` command: version, help, the optimizer profile's result format, and the rule
that curation and the CLI import without torch."""

import json
import subprocess
import sys

import pytest

from crucible import __version__
from crucible.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"crucible {__version__}"


@pytest.mark.parametrize("argv", [["--help"], ["profile", "--help"],
                                  ["profile", "optim", "--help"], ["curate", "--help"],
                                  ["quality", "train", "--help"], ["lm", "train", "--help"],
                                  ["lm", "score", "--help"]])
def test_every_subcommand_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage: crucible" in capsys.readouterr().out


def test_unknown_model_size_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown model size\(s\) \['huge'\]; choose from"):
        main(["profile", "optim", "--models", "huge"])


def test_profile_optim_writes_results_in_the_bench_format(tmp_path):
    out = tmp_path / "optim.json"
    assert main(["profile", "optim", "--models", "tiny", "--threads", "1",
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["bench"] == "optim"
    assert data["machine"]["cores"] >= 1 and data["machine"]["copy_gbps"] > 0
    references = [row["reference"] for row in data["results"]]
    assert references == ["torch.optim.AdamW(foreach=True)", "torch.optim.AdamW(fused=True)",
                          "clip_grad_norm_(foreach=True) + AdamW(fused=True)"]
    for row in data["results"]:
        assert row["metric"] == "ms/step" and row["ours"] > 0
        assert row["ratio"] == pytest.approx(row["reference_value"] / row["ours"], rel=2e-3)
        assert row["pct_copy_bw"] == pytest.approx(
            100 * row["ours_gbps"] / data["machine"]["copy_gbps"], rel=0.02)


@pytest.mark.parametrize("module", ["curation", "crucible.cli", "crucible.benchmarking"])
def test_imports_without_torch(module):
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_building_the_command_line_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from crucible.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
