"""The multi-node launch scripts, dry run: the command they would run, the launch log, the errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "training" / "launch"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    # the interpreter's bin directory first: unimodal, torchrun and deepspeed of this environment
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for var in ("NNODES", "NODE_RANK", "GPUS_PER_NODE", "MASTER_ADDR", "MASTER_PORT", "HOSTFILE"):
        env.pop(var, None)
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    return subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True, env=env, timeout=120)


def test_torchrun_dry_run_resolves_the_recipe_and_logs(tmp_path):
    out = tmp_path / "run"
    res = run("torchrun.sh", "-c", "shapes-tiny", "-o", str(out), "-g", "2", "--dry-run", "--", "train.max_steps=3")
    assert res.returncode == 0, res.stderr
    line = res.stdout.splitlines()[-1]
    assert line.startswith("torchrun --nnodes 1 --node-rank 0 --nproc-per-node 2 --master-addr 127.0.0.1")
    recipe = ROOT / "training" / "configs" / "shapes-tiny.yaml"
    assert f"unimodal train --config {recipe} --out {out} --resume auto train.max_steps=3" in line
    assert line in (out / "launch.log").read_text()


def test_multinode_dry_run_uses_the_hostfile(tmp_path):
    if not (Path(sys.executable).parent / "deepspeed").exists():
        pytest.skip("the deepspeed launcher is not installed beside this interpreter")
    hosts = tmp_path / "hostfile"
    hosts.write_text("# two nodes\nnode001 slots=8\nnode002 slots=8\n")
    out = tmp_path / "run"
    res = run("multinode.sh", "-H", str(hosts), "-c", "shapes-tiny", "-o", str(out), "-n", "2", "--dry-run")
    assert res.returncode == 0, res.stderr
    line = res.stdout.splitlines()[-1]
    assert line.startswith(f"deepspeed --hostfile {hosts} --master_addr node001 --master_port 29500 --num_nodes 2")
    assert "--no_python --no_local_rank unimodal train --config" in line
    assert "2 node(s): node001 node002" in (out / "launch.log").read_text()


@pytest.mark.parametrize("script", ["torchrun.sh", "multinode.sh"])
def test_unknown_recipe_and_missing_arguments_are_clear_errors(tmp_path, script):
    hosts = tmp_path / "hostfile"
    hosts.write_text("localhost slots=1\n")
    extra = ["-H", str(hosts)] if script == "multinode.sh" else []
    res = run(script, *extra, "-c", "no-such-recipe", "-o", str(tmp_path / "run"), "--dry-run")
    if script == "multinode.sh" and "deepspeed launcher is not on PATH" in res.stderr:
        pytest.skip("the deepspeed launcher is not installed")
    assert res.returncode == 2 and f"{script}: recipe" in res.stderr and "no-such-recipe.yaml' not found" in res.stderr
    res = run(script, *extra, "-o", str(tmp_path / "run"))
    assert res.returncode == 2 and "missing -c RECIPE" in res.stderr
