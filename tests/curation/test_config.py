"""Job configuration: YAML validation, presets, CLI overrides, clear errors."""

import pytest
import yaml

from curation.config import PRESETS, load_config, preset_pipeline


def write(tmp_path, data) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


def test_defaults_and_overrides(tmp_path):
    path = write(tmp_path, {"input": {"paths": ["a/"], "text_column": "body"},
                            "output": {"dir": "out"}, "executor": {"workers": 3}})
    config = load_config(path, inputs=["b/", "c.parquet"], output="elsewhere", workers=1,
                         executor="ray", ray_address="auto")
    assert config.input.paths == ["b/", "c.parquet"] and config.input.text_column == "body"
    assert config.output.dir == "elsewhere"
    assert (config.executor.kind, config.executor.workers, config.executor.ray_address) == \
        ("ray", 1, "auto")
    assert config.pipeline == preset_pipeline("default")


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds(name, tmp_path):
    from curation.builtin import load_builtin_steps
    from curation.registry import build_step

    load_builtin_steps()
    config = load_config(None, inputs=["x"], output="y", preset=name)
    steps = [build_step(spec, f"{name}[{i}]") for i, spec in enumerate(config.pipeline)]
    assert len(steps) >= 2


def test_unknown_keys_are_rejected_with_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) colour; valid keys: .*pipeline"):
        load_config(write(tmp_path, {"colour": "red"}), inputs=["x"], output="y")
    with pytest.raises(ValueError, match=r"input: unknown key\(s\) txt_col; valid keys: .*"
                                         r"text_column"):
        load_config(write(tmp_path, {"input": {"txt_col": "t"}}), inputs=["x"], output="y")


def test_type_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"input.batch_size: expected int, got 'many'"):
        load_config(write(tmp_path, {"input": {"batch_size": "many"}}), inputs=["x"], output="y")
    with pytest.raises(ValueError, match="batch_size must be > 0"):
        load_config(write(tmp_path, {"input": {"batch_size": 0}}), inputs=["x"], output="y")
    with pytest.raises(ValueError, match="executor.kind must be 'local' or 'ray'"):
        load_config(write(tmp_path, {"executor": {"kind": "slurm"}}), inputs=["x"], output="y")


def test_step_options_are_validated(tmp_path):
    from curation.builtin import load_builtin_steps
    from curation.registry import build_step

    load_builtin_steps()
    with pytest.raises(ValueError, match=r"pipeline\[0\] \(normalize\): unknown key\(s\) nfd; "
                                         r"valid keys: .*nfc"):
        build_step({"step": "normalize", "nfd": True}, "pipeline[0]")
    with pytest.raises(ValueError, match=r"unknown step 'dedupe'; available steps: .*exact_dedup"):
        build_step({"step": "dedupe"}, "pipeline[1]")


def test_missing_inputs_output_and_bad_yaml(tmp_path):
    with pytest.raises(ValueError, match="no inputs; set input.paths or pass --input"):
        load_config(None, output="y")
    with pytest.raises(ValueError, match="no output directory"):
        load_config(None, inputs=["x"])
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(write(tmp_path, "input: [unclosed"), inputs=["x"], output="y")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ValueError, match="unknown preset 'dolma'"):
        preset_pipeline("dolma")
