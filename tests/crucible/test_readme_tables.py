"""README benchmark tables are generated from the results files."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "bench" / "readme_tables.py")
readme_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_tables)


def test_tables_are_rendered_between_the_markers(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "optim.json").write_text(json.dumps({
        "bench": "optim",
        "machine": {"cpu": "Test CPU", "cores": 2, "gpu": None, "torch": "2.13.0"},
        "results": [{"case": "adamw x", "metric": "ms/step", "ours": 1.0,
                     "reference": "torch", "reference_value": 2.5, "ratio": 2.5}]}))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:begin -->\nold\n<!-- bench:end -->\noutro\n")
    readme_tables.update_readme(readme, readme_tables.render(results))
    text = readme.read_text()
    assert "old" not in text and text.startswith("intro") and text.endswith("outro\n")
    assert "| adamw x | ms/step | 1.00 | torch | 2.50 | **2.50×** |" in text
    assert "Test CPU (2 cores)" in text


def test_missing_markers_is_an_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers")
    with pytest.raises(SystemExit, match="markers"):
        readme_tables.update_readme(readme, "x")


@pytest.mark.parametrize("value,text", [(0.40851, "0.409"), (8.0249, "8.02"), (45.9, "45.9"),
                                        (397.8, "398"), (0.0, "0")])
def test_numbers_have_three_significant_digits(value, text):
    assert readme_tables._num(value) == text
