"""A real `enrich run`, killed part-way and run again, ends with the same output as an uninterrupted one."""

import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest


def command(sample, index, out):
    return [sys.executable, "-m", "enrich", "run", str(sample["new"]), "--index", str(index), "--out", str(out),
            "--columns", str(sample["columns"]), "--part-rows", "2", "--quiet"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_output(sample_index, sample, tmp_path):
    folder, _ = sample_index
    straight, resumed = tmp_path / "straight.parquet", tmp_path / "resumed.parquet"
    subprocess.run(command(sample, folder, straight), check=True, capture_output=True)

    process = subprocess.Popen(command(sample, folder, resumed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "resumed.parquet.parts"
    deadline = time.monotonic() + 120
    while not (parts / "part-00005.parquet").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not resumed.exists(), "the run finished before it could be killed"
    done = sorted(p.name for p in parts.glob("part-*.parquet"))
    assert 6 <= len(done) < 100

    subprocess.run(command(sample, folder, resumed), check=True, capture_output=True)
    first, second = pl.read_parquet(straight), pl.read_parquet(resumed)
    assert second.height == 200 and second["id"].n_unique() == 200
    assert first.equals(second)
    assert not parts.exists()
