"""Curation jobs end to end: counts add up, rejects carry reasons, exact dedup across shards,
resume after a crash or kill -9, executors agree byte for byte, bad input is quarantined."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import HERE, PROSE, write_shard

from crucible.cli import main
from curation.config import load_config
from curation.job import JobError, run_job

PIPELINE = [{"step": "normalize"}, {"step": "exact_dedup"},
            {"step": "test_min_chars", "min_chars": 12}]


def job(raw, out, workers=1, pipeline=PIPELINE, **executor):
    config = load_config(None, inputs=[str(raw)], output=str(out), workers=workers,
                         **executor)
    config.pipeline = pipeline
    config.plugins = ["plugin_steps"]
    return config


def file_digests(out: Path) -> dict[str, str]:
    """Every Parquet file under ``out`` (curated and rejected) with its content hash."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*.parquet"))}


def test_counts_add_up_and_rejects_have_reasons(raw_dir, tmp_path):
    out = tmp_path / "out"
    summary = run_job(job(raw_dir, out), show_progress=False)
    assert summary.ok and summary.shards_done == 3
    assert (summary.rows_in, summary.rows_kept, summary.rows_rejected) == (15, 4, 11)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done"
    for segment in manifest["segments"]:
        for result in segment["shards"].values():
            rejected = sum(sum(s["rejected"].values()) for s in result["steps"])
            assert result["rows_in"] == result["rows_out"] + rejected
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rows"] == {"in": 15, "kept": 4, "rejected": 11}
    assert stats["reasons"] == {"exact_dedup:duplicate": 5, "input:empty_text": 3,
                                "test_min_chars:too_short": 3}
    kept = pl.read_parquet(out / "*.parquet").sort("id")
    # PROSE and PROSE.upper() in every shard are one group (case-insensitive); the first
    # occurrence in input order (shard part-0, row 0) survives.
    assert kept["id"].to_list() == ["p0-0", "p0-2", "p1-2", "p2-2"]
    assert kept.filter(pl.col("id") == "p0-0")["exact_dup_cluster"].item() == "p0-0"
    assert kept["source"].null_count() == 0  # pass-through column kept
    dups = pl.read_parquet(out / "rejected" / "exact_dedup" / "*.parquet")
    assert set(dups["reason"]) == {"exact_dedup:duplicate"}
    assert set(dups["exact_dup_cluster"]) == {"p0-0"}
    empty = pl.read_parquet(out / "rejected" / "input" / "*.parquet")
    assert empty["reason"].to_list() == ["input:empty_text"] * 3
    assert (out / "report.html").read_text().count("<svg") >= 2
    assert not (out / "_work").exists()


def test_output_does_not_depend_on_worker_count(raw_dir, tmp_path):
    run_job(job(raw_dir, tmp_path / "one", workers=1), show_progress=False)
    run_job(job(raw_dir, tmp_path / "two", workers=2), show_progress=False)
    one, two = file_digests(tmp_path / "one"), file_digests(tmp_path / "two")
    assert one == two and len(one) >= 6


def test_ray_executor_gives_byte_identical_output(raw_dir, tmp_path):
    ray = pytest.importorskip("ray")
    run_job(job(raw_dir, tmp_path / "local", workers=2), show_progress=False)
    try:
        summary = run_job(job(raw_dir, tmp_path / "ray", workers=2, executor="ray"),
                          show_progress=False)
    finally:
        ray.shutdown()
    assert summary.ok, summary.quarantined
    assert file_digests(tmp_path / "local") == file_digests(tmp_path / "ray")


def test_existing_output_needs_resume_and_same_config(raw_dir, tmp_path):
    out = tmp_path / "out"
    run_job(job(raw_dir, out), show_progress=False)
    with pytest.raises(JobError, match="--resume"):
        run_job(job(raw_dir, out), show_progress=False)
    changed = job(raw_dir, out, pipeline=PIPELINE[:2])
    with pytest.raises(JobError, match="config changed"):
        run_job(changed, resume=True, show_progress=False)


def test_resume_skips_finished_shards_and_redoes_the_rest(raw_dir, tmp_path):
    out = tmp_path / "out"
    single_segment = [{"step": "normalize"}, {"step": "test_min_chars", "min_chars": 12}]
    run_job(job(raw_dir, out, pipeline=single_segment), show_progress=False)
    reference = file_digests(out)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    # Simulate a crash in the last segment after part-1 finished but before part-2 did.
    last = manifest["segments"][-1]["shards"]
    lost = last.pop("part-2")
    for path in lost["outputs"]:
        Path(path).unlink()
    manifest_path.write_text(json.dumps(manifest))
    kept_mtime = {p: os.stat(p).st_mtime_ns for p in last["part-1"]["outputs"]}
    summary = run_job(job(raw_dir, out, pipeline=single_segment), resume=True,
                      show_progress=False)
    assert summary.ok and summary.rows_kept == 9
    assert file_digests(out) == reference
    assert {p: os.stat(p).st_mtime_ns for p in kept_mtime} == kept_mtime


@pytest.fixture(scope="module", params=["exact_dedup", "minhash_dedup"])
def slow_job(tmp_path_factory, request):
    """Eight shards through a deliberately slow two-segment job (split by a global dedup
    step), and its clean output."""
    tmp = tmp_path_factory.mktemp("slow_job")
    raw = tmp / "raw"
    for i in range(8):
        write_shard(raw / f"s{i}.parquet",
                    [f"{PROSE} Document {i}-{j}." for j in range(30)] + [PROSE],
                    ids=[f"d{i}-{j}" for j in range(31)])
    pipeline = [{"step": "normalize"}, {"step": "test_slow", "seconds_per_batch": 0.15},
                {"step": request.param}, {"step": "test_slow", "seconds_per_batch": 0.15}]
    config = {"input": {"paths": [str(raw)], "batch_size": 10}, "executor": {"workers": 1},
              "pipeline": pipeline, "plugins": ["plugin_steps"]}
    (tmp / "job.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "crucible.cli", "curate", "--config", str(tmp / "job.yaml"),
           "--no-progress", "--output"]
    subprocess.run(cmd + [str(tmp / "clean")], check=True, env=env, capture_output=True)
    return cmd, env, tmp / "clean"


@pytest.mark.parametrize("kill_after", [0.5, 1.4, 2.5])
def test_kill_9_at_any_moment_then_resume_loses_and_duplicates_nothing(slow_job, tmp_path,
                                                                       kill_after):
    cmd, env, clean = slow_job
    crashed = tmp_path / "crashed"
    proc = subprocess.Popen(cmd + [str(crashed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(cmd + [str(crashed), "--resume"], env=env, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert file_digests(crashed) == file_digests(clean)
    assert not list(crashed.rglob("*.tmp"))
    stats = json.loads((crashed / "stats.json").read_text())
    assert stats["rows"] == json.loads((clean / "stats.json").read_text())["rows"]
    assert stats["rows"]["in"] == 248 and stats["rows"]["kept"] <= 241


# --- bad input ------------------------------------------------------------------------------

def run_cli(raw: Path, out: Path, *extra: str, capsys) -> tuple[int, str]:
    if "--config" not in extra:  # a light pipeline: these tests are about the input
        config = raw.parent / "light.yaml"
        config.write_text(yaml.safe_dump({"pipeline": [{"step": "normalize"},
                                                       {"step": "exact_dedup"}]}))
        extra = (*extra, "--config", str(config))
    code = main(["curate", "--input", str(raw), "--output", str(out), "--workers", "1",
                 "--no-progress", *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def good_shard(raw: Path) -> None:
    write_shard(raw / "good.parquet", [PROSE, f"{PROSE} Again."], ids=["g0", "g1"])


def test_corrupt_and_truncated_parquet_are_quarantined(tmp_path, capsys):
    raw = tmp_path / "raw"
    good_shard(raw)
    (raw / "garbage.parquet").write_bytes(b"this is not parquet at all" * 10)
    write_shard(raw / "cut.parquet", [PROSE] * 200)
    data = (raw / "cut.parquet").read_bytes()
    (raw / "cut.parquet").write_bytes(data[: len(data) // 2])
    code, output = run_cli(raw, tmp_path / "out", capsys=capsys)
    assert code == 1
    assert "2 shard(s) quarantined" in output
    assert "garbage.parquet: not a readable Parquet file" in output
    assert "cut.parquet" in output and "--resume" in output
    assert pl.read_parquet(tmp_path / "out" / "good-*.parquet").height == 2
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "incomplete" and set(manifest["quarantined"]) == {"garbage", "cut"}


def test_missing_or_non_string_text_column(tmp_path, capsys):
    raw = tmp_path / "raw"
    good_shard(raw)
    write_shard(raw / "body.parquet", [PROSE], body=["x"])
    (raw / "body.parquet").unlink()
    import pyarrow as pa

    pq.write_table(pa.table({"id": ["b0"], "body": [PROSE]}), raw / "body.parquet")
    pq.write_table(pa.table({"id": ["n0"], "text": [42]}), raw / "numbers.parquet")
    code, output = run_cli(raw, tmp_path / "out", capsys=capsys)
    assert code == 1
    assert "body.parquet: column 'text' is missing (found: id, body); set input.text_column" \
        in output
    assert "numbers.parquet: column 'text' has type int64" in output


def test_nulls_empty_invalid_utf8_and_huge_documents_are_rejected_with_reasons(tmp_path, capsys):
    import pyarrow as pa

    raw = tmp_path / "raw"
    raw.mkdir()
    huge = "word " * (50 * 1024 * 1024 // 5)  # a 50 MB document
    texts = [PROSE.encode(), None, b"", b"   \n ", b"caf\xe9 latin-1 bytes", huge.encode()]
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(6)],
                             "text": pa.array(texts, pa.binary())}), raw / "mixed.parquet")
    code, output = run_cli(raw, tmp_path / "out", capsys=capsys)
    assert code == 0, output
    rejected = pl.read_parquet(tmp_path / "out" / "rejected" / "input" / "*.parquet")
    assert dict(zip(rejected["id"], rejected["reason"])) == {
        "r1": "input:null_text", "r2": "input:empty_text", "r3": "input:empty_text",
        "r4": "input:invalid_utf8", "r5": "input:too_long"}
    assert pl.read_parquet(tmp_path / "out" / "*.parquet")["id"].to_list() == ["r0"]


def test_a_step_that_crashes_quarantines_only_its_shard(tmp_path, capsys):
    raw = tmp_path / "raw"
    good_shard(raw)
    write_shard(raw / "bomb.parquet", [PROSE, "EXPLODE here"], ids=["b0", "b1"])
    config = {"pipeline": [{"step": "test_explode"}], "plugins": ["plugin_steps"]}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    code, output = run_cli(raw, tmp_path / "out", "--config", str(tmp_path / "job.yaml"),
                           capsys=capsys)
    assert code == 1 and "bomb: RuntimeError: boom" in output
    assert not list((tmp_path / "out").glob("bomb-*.parquet"))


def test_unwritable_output_is_a_clear_error(tmp_path, capsys):
    raw = tmp_path / "raw"
    good_shard(raw)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, output = run_cli(raw, blocker / "out", capsys=capsys)
    assert code == 2
    assert str(blocker / "out") in output
