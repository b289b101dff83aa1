"""The trainer end to end (issue 5): exact resume after SIGKILL (with AdamW and with Muon), after
SIGTERM and after a crash inside a checkpoint write; two CPU processes under ZeRO-2, ZeRO-3 and
ZeRO-2 with Muon against one; non-finite losses; config errors; the main job on a shortened
schedule.

Every run is a real `unimodal train` process (or tests/train_worker.py, the same command with two
test hooks) with a real DeepSpeed engine, gloo on CPU, one torch thread per rank. The runs are
independent, so the module's `runs` fixture starts every run the selected tests need in background
threads, keeping at most SLOTS ranks busy at once (two on CI's two cores), and each test waits
only for its own runs. Everything is seeded: a run repeated gives bitwise the same weights.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from unimodal.cli import main
from unimodal.pipeline import Pipeline
from unimodal.precision import resolve_precision
from unimodal.train.checkpoint import COMPLETE, find_resume
from unimodal.train.config import load_config

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("train_worker.py")
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
SLOTS = max(2, min(CPUS, 8))  # ranks running at once
TIMEOUT = 420  # seconds for one process; a hung run fails its test instead of the whole suite

# The micro model on 16x16 shapes scenes (captioning and text->image mixed, so both losses are
# live), with a learning rate that moves the weights and a short-memory EMA, so the exported (EMA)
# weights depend on every step. Finishing touches are cut to the minimum (no sample grid, no
# captions, one evaluation batch).
MICRO = [
    "model.preset=micro",
    "model.image_size=16",
    "model.patch_size=4",
    "model.block_size=2",
    "data.batch_size=4",
    # one document per row: the one-process reference and the data-parallel ranks then compute
    # every document's row alike (packed rows would group documents differently, and bf16 drifts)
    "data.collate.pack_rows=null",
    # every document trains diffusion: with captioning-only documents a rank may hold no noisy
    # token and take the no-AdaLN path, whose bf16 rounding differs enough to drift past 1e-3 over
    # 20 steps at this learning rate; the float32 gradients of such shards equal one process's
    # exactly (tests/test_diffusion.py::test_data_parallel_shards_sum_to_the_global_gradient)
    "data.collate.image_first_diffusion=true",
    "optim.kind=adamw",  # the recipe's Muon needs no clipping under ZeRO 1-2; MUON below switches it on
    "optim.lr=3.0e-3",  # not 3e-3, which YAML reads as a string
    "schedule.warmup_steps=2",
    "ema.decay=0.9",
    "train.num_threads=1",
    "sample.per_prompt=0",  # no sample grid
    "sample.captions=0",
    "eval.samples=4",
]
STEPS, EVERY = 20, 4
REF = [*MICRO, f"train.max_steps={STEPS}", f"train.checkpoint_every={EVERY}"]
# Muon for the blocks' matrices (unimodal/train/optim.py): its momentum must survive a resume, and
# ZeRO must orthogonalise each matrix whole before it splits the update across ranks
MUON = ["optim.kind=muon", "optim.muon_lr=0.05", "optim.grad_clip=0"]  # no clipping: see test_muon_config_errors
CRASH_AT = 2 * EVERY  # the checkpoint write the crash test dies in
NAN_FROM = 2 * EVERY + 1  # the many-non-finite test poisons every micro-batch from this one on
# The main job: the default recipe (`unimodal train` with no arguments) on a shortened schedule.
MAIN = [
    "train.max_steps=3",
    "train.checkpoint_every=3",
    "sample.num_steps=2",
    "sample.per_prompt=1",
    "sample.captions=2",
    "eval.samples=8",
    "train.num_threads=1",  # the runs share the cores; one thread each is fastest
]


# ------------------------------------------------------------------------------ processes


@dataclass
class Proc:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def expect(self, code: int) -> None:
        assert self.returncode == code, (
            f"exit status {self.returncode}, expected {code}: {' '.join(self.argv)}\n"
            f"--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"
        )


class Slots:
    """A first-come first-served counting semaphore: a two-rank run takes two slots at once."""

    def __init__(self, n: int) -> None:
        self.free, self.queue, self.cond = n, [], threading.Condition()

    def acquire(self, n: int) -> None:
        with self.cond:
            ticket = object()
            self.queue.append(ticket)
            self.cond.wait_for(lambda: self.queue[0] is ticket and self.free >= n)
            self.queue.pop(0)
            self.free -= n
            self.cond.notify_all()

    def release(self, n: int) -> None:
        with self.cond:
            self.free += n
            self.cond.notify_all()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's variables, on the CPU, one thread, this checkout first."""
    launcher = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    e = {k: v for k, v in os.environ.items() if k not in launcher}
    # CPU only, also on a machine with GPUs: the runs compare weights bitwise and two ranks share the CPU.
    e.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu", **extra)
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return e


def cli(out: Path, *overrides: str, resume: bool = False) -> list[str]:
    """`unimodal train` in one process."""
    flags = ["--resume", "auto"] if resume else []
    return [sys.executable, "-m", "unimodal.cli", "train", "--out", str(out), *flags, *overrides]


def worker(out: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(WORKER), "--out", str(out), *overrides]


def torchrun(out: Path, *overrides: str) -> list[str]:
    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return [*runner, *worker(out, *overrides)[1:]]


def deepspeed_launcher(out: Path, *overrides: str) -> list[str]:
    runner = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port())]
    return [*runner, *worker(out, *overrides)[1:]]


def read_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return rows


def loss_rows(out: Path) -> list[dict[str, Any]]:
    return [r for r in read_rows(out / "metrics.jsonl") if "loss" in r]


def last_step(out: Path) -> int:
    return max((r["step"] for r in loss_rows(out)), default=0)


def snapshot(out: Path) -> dict[str, Any]:
    """A run directory's checkpoints and progress, taken when its process has ended."""
    root = out / "checkpoints"
    latest = root / "latest"
    return {
        "latest": latest.read_text().strip() if latest.is_file() else None,
        "complete": sorted(p.name for p in root.glob("step-*") if (p / COMPLETE).is_file()),
        "last_step": last_step(out),
        "model": (out / "model").exists(),
    }


class Runs:
    """The module's training runs: jobs (chains of processes) in background threads."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.slots = Slots(SLOTS)
        self.pool = ThreadPoolExecutor(max_workers=len(JOBS))
        self.futures: dict[str, Future] = {}
        self.live: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False

    def start(self, name: str) -> None:
        with self.lock:
            if name not in self.futures:
                d = self.base / name
                d.mkdir()
                self.futures[name] = self.pool.submit(JOBS[name], self, d)

    def get(self, name: str) -> dict[str, Any]:
        self.start(name)
        return self.futures[name].result()

    def proc(
        self,
        d: Path,
        label: str,
        argv: list[str],
        ranks: int = 1,
        extra_env: dict[str, str] | None = None,
        signal_at: tuple[Path, int, int] | None = None,
    ) -> Proc:
        """Run argv in d to its end; with `signal_at=(out, step, signum)`, send signum once out's
        metrics.jsonl has reached that step."""
        self.slots.acquire(ranks)
        try:
            if self.stopping:
                raise RuntimeError("the test module is tearing down")
            t0 = time.perf_counter()
            with open(d / f"{label}.out", "w") as so, open(d / f"{label}.err", "w") as se:
                p = subprocess.Popen(
                    argv, cwd=d, env=env(**(extra_env or {})), stdout=so, stderr=se, start_new_session=True
                )
                with self.lock:
                    self.live.add(p)
                try:
                    if signal_at is not None:
                        out, step, signum = signal_at
                        while p.poll() is None and time.perf_counter() - t0 < TIMEOUT:
                            if last_step(out) >= step:
                                p.send_signal(signum)
                                break
                            time.sleep(0.02)
                    p.wait(timeout=max(1.0, TIMEOUT - (time.perf_counter() - t0)))
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
                finally:
                    with self.lock:
                        self.live.discard(p)
            seconds = time.perf_counter() - t0
            with self.lock, open(self.base / "timings.jsonl", "a") as f:  # where the module's time goes
                f.write(json.dumps({"run": f"{d.name}/{label}", "ranks": ranks, "seconds": round(seconds, 1)}) + "\n")
            return Proc(
                argv,
                p.returncode,
                (d / f"{label}.out").read_text(errors="replace"),
                (d / f"{label}.err").read_text(errors="replace"),
                seconds,
            )
        finally:
            self.slots.release(ranks)

    def close(self) -> None:
        self.stopping = True
        with self.lock:
            for p in self.live:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------- jobs


def job_reference(*extra: str) -> Callable[[Runs, Path], dict[str, Any]]:
    """The uninterrupted run every resume is compared with, and the one-process side of ZeRO."""

    def job(r: Runs, d: Path) -> dict[str, Any]:
        return {"run": r.proc(d, "train", cli(d / "run", *REF, *extra)), "out": d / "run"}

    return job


def job_sigkill(*extra: str) -> Callable[[Runs, Path], dict[str, Any]]:
    def job(r: Runs, d: Path) -> dict[str, Any]:
        out = d / "run"
        k = random.Random(0).randint(EVERY + 1, STEPS - EVERY - 1)  # 11
        killed = r.proc(d, "killed", cli(out, *REF, *extra), signal_at=(out, k, signal.SIGKILL))
        at_kill = snapshot(out)
        resumed = r.proc(d, "resumed", cli(out, *REF, *extra, resume=True))
        return {"k": k, "killed": killed, "at_kill": at_kill, "resumed": resumed, "out": out}

    return job


def job_sigterm(r: Runs, d: Path) -> dict[str, Any]:
    out = d / "run"
    # No checkpoint interval before the end, so the checkpoint found is the one the signal wrote
    # (and the interval is shown not to change the training: the weights still equal REF's).
    # Batches are built ahead in a thread here (REF builds them on the main thread): the same
    # batches, and the checkpoint holds the data position of the batches consumed, not built.
    overrides = [*REF, f"train.checkpoint_every={STEPS}", "data.prefetch=3"]
    k = random.Random(0).randint(3, STEPS - 6)  # 9
    stopped = r.proc(d, "terminated", cli(out, *overrides), signal_at=(out, k, signal.SIGTERM))
    at_stop = snapshot(out)
    resumed = r.proc(d, "resumed", cli(out, *overrides, resume=True))
    return {"k": k, "stopped": stopped, "at_stop": at_stop, "resumed": resumed, "out": out}


def job_crash_in_save(r: Runs, d: Path) -> dict[str, Any]:
    out = d / "run"
    root = out / "checkpoints"
    crashed = r.proc(d, "crashed", worker(out, *REF), extra_env={"UNIMODAL_TEST_CRASH_IN_SAVE": str(CRASH_AT)})
    at_crash = snapshot(out)
    tmp = root / f".tmp-step-{CRASH_AT:06d}"
    partial = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*")) if tmp.is_dir() else []
    # Worse still: the half-written checkpoint also under its final name, without the marker (as a
    # file system that reorders the rename before the marker's data could leave it).
    if tmp.is_dir():
        shutil.copytree(tmp, root / f"step-{CRASH_AT:06d}")
    chosen = find_resume(root, "auto")
    pointer = (root / "latest").read_text() if (root / "latest").is_file() else None
    if pointer is not None:  # and with the pointer lost, the scan for complete checkpoints
        (root / "latest").unlink()
    chosen_by_scan = find_resume(root, "auto")
    if pointer is not None:
        (root / "latest").write_text(pointer)
    resumed = r.proc(d, "resumed", cli(out, *REF, resume=True))
    return {
        "crashed": crashed,
        "at_crash": at_crash,
        "partial": partial,
        "chosen": chosen,
        "chosen_by_scan": chosen_by_scan,
        "resumed": resumed,
        "out": out,
    }


def job_nonfinite_once(r: Runs, d: Path) -> dict[str, Any]:
    out = d / "run"
    argv = cli(out, *MICRO, "train.max_steps=6", "train.checkpoint_every=6", "train.inject_nonfinite=[3]")
    return {"run": r.proc(d, "train", argv), "out": out}


def job_nonfinite_many(r: Runs, d: Path) -> dict[str, Any]:
    out = d / "run"
    poison = f"train.inject_nonfinite={list(range(NAN_FROM, STEPS + 10))}"
    stopped = r.proc(d, "stopped", cli(out, *REF, poison, "train.max_nonfinite=3"))
    at_stop = snapshot(out)
    resumed = r.proc(d, "resumed", cli(out, *REF, "train.inject_nonfinite=[]", resume=True))
    return {"stopped": stopped, "at_stop": at_stop, "resumed": resumed, "out": out}


def job_zero(stage: int, launcher: Callable[..., list[str]], *extra: str) -> Callable[[Runs, Path], dict[str, Any]]:
    def job(r: Runs, d: Path) -> dict[str, Any]:
        out = d / "run"
        overrides = [
            *MICRO,
            "data.batch_size=2",  # per rank: the reference's global batch of 4
            f"train.max_steps={STEPS}",
            f"train.checkpoint_every={STEPS // 2}",
            f"deepspeed=training/deepspeed/zero{stage}.json",
            *extra,
        ]
        return {"run": r.proc(d, "train", launcher(out, *overrides), ranks=2), "out": out}

    return job


def job_bad_config(r: Runs, d: Path) -> dict[str, Any]:
    return {"run": r.proc(d, "train", cli(d / "run", "train.max_stepz=3")), "out": d / "run"}


def job_main(r: Runs, d: Path) -> dict[str, Any]:
    return {"run": r.proc(d, "train", cli(d / "run", *MAIN)), "out": d / "run"}


# Started in this order and served first come first served: the two-rank runs first (each takes
# both slots, so behind a one-rank run one slot would idle), then the longest one-rank run.
JOBS: dict[str, Callable[[Runs, Path], dict[str, Any]]] = {
    "zero2": job_zero(2, deepspeed_launcher),
    "zero3": job_zero(3, torchrun),
    "zero2_muon": job_zero(2, deepspeed_launcher, *MUON),
    "main": job_main,
    "reference": job_reference(),
    "muon_reference": job_reference(*MUON),
    "sigkill": job_sigkill(),
    "muon_sigkill": job_sigkill(*MUON),
    "sigterm": job_sigterm,
    "crash_in_save": job_crash_in_save,
    "nonfinite_many": job_nonfinite_many,
    "nonfinite_once": job_nonfinite_once,
    "bad_config": job_bad_config,
}
NEEDS = {
    "test_resume_after_sigkill_is_exact[adamw]": ("reference", "sigkill"),
    "test_resume_after_sigkill_is_exact[muon]": ("muon_reference", "muon_sigkill"),
    "test_crash_inside_a_checkpoint_write_resumes_from_the_previous_one": ("reference", "crash_in_save"),
    "test_sigterm_writes_a_checkpoint_and_resume_is_exact": ("reference", "sigterm"),
    "test_two_processes_match_one[zero2]": ("reference", "zero2"),
    "test_two_processes_match_one[zero3]": ("reference", "zero3"),
    "test_two_processes_match_one[zero2_muon]": ("muon_reference", "zero2_muon"),
    "test_one_nonfinite_loss_is_skipped_and_counted": ("nonfinite_once",),
    "test_many_nonfinite_losses_stop_the_run_with_the_checkpoint_intact": ("reference", "nonfinite_many"),
    "test_config_error_exit_status_from_a_process": ("bad_config",),
    "test_main_job_end_to_end": ("main",),
}


@pytest.fixture(scope="module", autouse=True)
def runs(request, tmp_path_factory):
    r = Runs(tmp_path_factory.mktemp("train"))
    mine = {item.name for item in request.session.items if getattr(item, "module", None) is sys.modules[__name__]}
    wanted = {job for name in mine for job in NEEDS.get(name, ())}
    for job in JOBS:
        if job in wanted:
            r.start(job)
    yield r
    r.close()


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "model.safetensors")


def assert_same_weights(out: Path, ref: Path) -> None:
    a, b = weights(out), weights(ref)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} exported tensors differ from the uninterrupted run's: {differ[:4]}"


def assert_losses_match_reference(out: Path, ref: Path) -> None:
    """Every logged step (the ones trained twice included) has the uninterrupted run's loss."""
    want = {r["step"]: r["loss"] for r in loss_rows(ref)}
    got = loss_rows(out)
    assert got and all(r["loss"] == want[r["step"]] for r in got), [
        (r["step"], r["loss"], want[r["step"]]) for r in got
    ]


def values(tree: Any, key: str) -> list[Any]:
    """Every value under `key` anywhere in a JSON tree (metrics.json nests its evaluation)."""
    if isinstance(tree, dict):
        return [v for k, x in tree.items() for v in ([x] if k == key else values(x, key))]
    if isinstance(tree, list):
        return [v for x in tree for v in values(x, key)]
    return []


def ckpt(step: int) -> str:
    return f"step-{step:06d}"


# ---------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_after_sigkill_is_exact(runs, capsys, optimizer):
    prefix = "" if optimizer == "adamw" else f"{optimizer}_"
    ref, job = runs.get(f"{prefix}reference"), runs.get(f"{prefix}sigkill")
    ref["run"].expect(0)
    assert job["killed"].returncode == -signal.SIGKILL, f"the run ended before it was killed: {job['killed']}"
    at = job["at_kill"]
    assert job["k"] <= at["last_step"] < STEPS and not at["model"]
    assert at["latest"] is not None and at["latest"] in at["complete"]
    c = int(at["latest"].removeprefix("step-"))
    assert c <= at["last_step"]

    job["resumed"].expect(0)
    out = job["out"]
    assert f"resumed from {out / 'checkpoints' / ckpt(c)} at step {c}" in job["resumed"].stdout
    steps = [r["step"] for r in loss_rows(out)]
    assert steps == list(range(1, at["last_step"] + 1)) + list(range(c + 1, STEPS + 1))
    assert_losses_match_reference(out, ref["out"])
    assert_same_weights(out, ref["out"])

    # A finished run directory is not trained into again without --resume.
    assert main(["train", "--out", str(out), *REF]) == 2
    assert "--resume auto" in capsys.readouterr().err


def test_crash_inside_a_checkpoint_write_resumes_from_the_previous_one(runs):
    ref, job = runs.get("reference"), runs.get("crash_in_save")
    job["crashed"].expect(-signal.SIGKILL)
    at = job["at_crash"]
    previous = ckpt(CRASH_AT - EVERY)
    # The crash came after DeepSpeed wrote its shards, before the extras and the marker: the
    # previous checkpoint is still the latest, complete one.
    assert at["last_step"] == CRASH_AT and at["latest"] == previous and at["complete"][-1] == previous
    assert any(p.startswith("ds") for p in job["partial"]), job["partial"]
    assert COMPLETE not in job["partial"] and "extra-rank0.pt" not in job["partial"]
    root = job["out"] / "checkpoints"
    assert job["chosen"] == root / previous and job["chosen_by_scan"] == root / previous

    job["resumed"].expect(0)
    assert f"resumed from {root / previous} at step {CRASH_AT - EVERY}" in job["resumed"].stdout
    assert not list(root.glob(".tmp-*")), "a finished run left a temporary checkpoint behind"
    assert all((p / COMPLETE).is_file() for p in root.glob("step-*"))
    assert_losses_match_reference(job["out"], ref["out"])
    assert_same_weights(job["out"], ref["out"])


def test_sigterm_writes_a_checkpoint_and_resume_is_exact(runs):
    ref, job = runs.get("reference"), runs.get("sigterm")
    job["stopped"].expect(128 + signal.SIGTERM)
    at = job["at_stop"]
    s = at["last_step"]
    assert job["k"] <= s < STEPS and not at["model"]
    assert f"stopped by signal {int(signal.SIGTERM)} at step {s}; checkpoint written" in job["stopped"].stdout
    assert at["latest"] == ckpt(s) and at["complete"] == [ckpt(s)]  # written at the stop

    job["resumed"].expect(0)
    out = job["out"]
    assert f"at step {s}" in job["resumed"].stdout
    assert [r["step"] for r in loss_rows(out)] == list(range(1, STEPS + 1))  # no step trained twice
    assert_losses_match_reference(out, ref["out"])
    assert_same_weights(out, ref["out"])


@pytest.mark.parametrize("name", ["zero2", "zero3", "zero2_muon"])
def test_two_processes_match_one(runs, name):
    stage = int(name[4])
    ref, job = runs.get("muon_reference" if name.endswith("muon") else "reference"), runs.get(name)
    job["run"].expect(0)
    out = job["out"]
    # The trainer all-reduces the losses: every rank, and metrics.jsonl, hold the loss of the whole
    # global batch, which one process computes.
    shares = [read_rows(out / f"losses-rank{r}.jsonl") for r in (0, 1)]
    assert [x["step"] for x in shares[0]] == [x["step"] for x in shares[1]] == list(range(1, STEPS + 1))
    assert [a["loss"] for a in shares[0]] == [b["loss"] for b in shares[1]]
    one = [r["loss"] for r in loss_rows(ref["out"])]
    two = [r["loss"] for r in loss_rows(out)]
    rel = [abs(x - y) / abs(y) for x, y in zip(two, one, strict=True)]
    assert max(rel) < 1e-3, list(zip(two, one, strict=True))
    assert one[-1] < 0.8 * one[0]  # and the runs really trained
    assert [r["step"] for r in loss_rows(out)] == list(range(1, STEPS + 1))  # rank 0's metrics

    latest = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    assert latest.name == ckpt(STEPS)
    extra = [torch.load(latest / f"extra-rank{r}.pt", weights_only=False) for r in (0, 1)]  # data, RNG, EMA
    ema_numel = [None if e["ema"] is None else sum(t.numel() for t in e["ema"]["shadow"]) for e in extra]
    if stage == 3:  # each rank holds its half of the EMA
        assert ema_numel[0] == ema_numel[1] and 2 * ema_numel[0] >= sum(v.numel() for v in weights(out).values())
    else:  # whole weights on every rank: one EMA, on rank 0
        assert ema_numel[1] is None and ema_numel[0] == sum(v.numel() for v in weights(out).values())

    # The export is whole (the ZeRO-3 EMA shards gathered) and loads into one process.
    w, w_ref = weights(out), weights(ref["out"])
    assert w.keys() == w_ref.keys()
    assert all(w[k].shape == w_ref[k].shape for k in w)
    assert max((w[k] - w_ref[k]).abs().max().item() for k in w) < 2e-2
    pipe = Pipeline.from_pretrained(out, num_steps=2)
    images = pipe.text_to_image(["a small red circle at the top left"], seed=0)
    assert len(images) == 1 and images[0].size == (16, 16)
    assert len(pipe.caption(images, max_new_tokens=4)) == 1


def test_one_nonfinite_loss_is_skipped_and_counted(runs):
    job = runs.get("nonfinite_once")
    job["run"].expect(0)
    out = job["out"]
    rows = read_rows(out / "metrics.jsonl")
    assert [r for r in rows if "skipped" in r] == [{"step": 3, "skipped": "nonfinite", "nonfinite": 1}]
    good = [r for r in rows if "loss" in r]
    assert [r["step"] for r in good] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) for r in good)
    assert [r["nonfinite"] for r in good] == [0, 0, 0, 1, 1, 1]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nonfinite_skipped"] == 1 and metrics["steps"] == 6
    assert (out / "model" / "model.safetensors").is_file()


def test_many_nonfinite_losses_stop_the_run_with_the_checkpoint_intact(runs):
    ref, job = runs.get("reference"), runs.get("nonfinite_many")
    stopped = job["stopped"]
    stopped.expect(2)
    root = job["out"] / "checkpoints"
    assert f"3 non-finite losses in a row at step {NAN_FROM}" in stopped.stderr
    assert str(root) in stopped.stderr and "--resume auto" in stopped.stderr
    rows = read_rows(job["out"] / "metrics.jsonl")
    assert [r["nonfinite"] for r in rows if "skipped" in r] == [1, 2, 3]  # every skip is logged
    at = job["at_stop"]
    assert at["last_step"] == NAN_FROM and at["latest"] == ckpt(NAN_FROM - 1) == at["complete"][-1]
    assert not at["model"]  # nothing exported from a failed run

    # The last good checkpoint is intact: resumed with the poison removed, the run ends exactly
    # where one that never saw a non-finite loss does.
    job["resumed"].expect(0)
    assert f"resumed from {root / ckpt(NAN_FROM - 1)} at step {NAN_FROM - 1}" in job["resumed"].stdout
    assert_same_weights(job["out"], ref["out"])


@pytest.mark.parametrize(
    "override, names",
    [
        ("train.max_stepz=3", ["train.max_stepz"]),
        ("train.max_steps=abc", ["train.max_steps", "abc"]),
        ("model.preset=nosuch", ["model.preset", "nosuch"]),
        ("model.dimm=8", ["dimm"]),
        ("deepspeed=training/deepspeed/zero9.json", ["deepspeed", "zero9.json"]),
        ("optim.betas=0.9", ["optim.betas"]),
        ("optim.kind=sgd", ["optim.kind", "sgd"]),
        ("optim.muon_lr=0", ["optim.muon_lr"]),
        ("optim.muon_momentum=1", ["optim.muon_momentum"]),
        ("loss.time_std=0", ["loss.time_std"]),
        ("loss.time_mean_end=high", ["loss.time_mean_end", "high"]),
        ("model.prediction=x0", ["prediction", "x0"]),
        ("train.precision=fp16", ["train.precision", "fp16"]),
        ("sample.per_prompt=-1", ["sample.per_prompt"]),
        ("loss.context_noise=2", ["loss.context_noise"]),
        ("loss.context=samples", ["loss.context", "samples"]),
        ("loss.context_every=0", ["loss.context_every"]),
        ("loss.context_from=1", ["loss.context_from"]),
        ("loss.edge_weight=-1", ["loss.edge_weight"]),
        ("loss.self_cond_every=0", ["loss.self_cond_every"]),
        ("model.sigma_data=-0.5", ["sigma_data"]),
        ("data.prefetch=-1", ["data.prefetch"]),
        ("data.prefetch=null", ["data.prefetch", "None"]),
        ("data.options.object_weights=[1,2]", ["data", "object_weights", "[1, 2]"]),
        ("data.options.colorz=3", ["data", "colorz"]),
        ("data.task=nope", ["data", "nope"]),
    ],
)
def test_config_errors_name_the_key(tmp_path, capsys, override, names):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unimodal train: error:") and "Traceback" not in err
    for name in names:
        assert name in err, err
    assert not out.exists()  # rejected before anything was written


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["deepspeed=training/deepspeed/zero2.json"], "optim.grad_clip"),  # clipping on by default
        (["deepspeed=training/deepspeed/zero1.json", "optim.grad_clip=0.5"], "optim.grad_clip"),
        (["deepspeed=training/deepspeed/zero3.json", "optim.grad_clip=0"], "deepspeed"),
        (["deepspeed=training/deepspeed/zero2_offload.json", "optim.grad_clip=0"], "optim.kind"),
    ],
)
def test_muon_config_errors(overrides, key):
    """Muon with what DeepSpeed gets wrong is refused on load: ZeRO 1-2 would clip the
    orthogonalised update rather than the gradient, ZeRO-3 runs it per micro-batch and without a
    reduce-scatter, and offloading has no Muon."""
    load_config(None, ["optim.kind=muon", "optim.grad_clip=0", "deepspeed=training/deepspeed/zero2.json"])
    with pytest.raises(ValueError, match=f"config.{key}"):
        load_config(None, ["optim.kind=muon", *overrides])


def test_trainer_applies_the_edge_weight(tmp_path):
    """The same first step with and without `loss.edge_weight`: the same batch and text loss, a
    larger image loss (every weight is >= 1 and the shapes' outlines get more)."""
    first = {}
    for lam in (0, 8):
        out = tmp_path / f"edge{lam}"
        args = ["train", "--out", str(out), *MICRO, "train.max_steps=1", "train.checkpoint_every=1", "eval.tasks=[]"]
        assert main([*args, f"loss.edge_weight={lam}"]) == 0
        first[lam] = read_rows(out / "metrics.jsonl")[0]
    assert first[8]["text"] == first[0]["text"]
    assert first[8]["image"] > first[0]["image"] * 1.05


def forwards_per_step(tmp_path, overrides: list[str], steps: int = 5):
    """The model forwards in each of `steps` training steps of the micro recipe with `overrides`,
    and the trainer."""
    from unimodal.train.config import load_config
    from unimodal.train.trainer import Trainer

    trainer = Trainer(load_config(None, [*MICRO, *overrides]), tmp_path / "run")
    calls = []
    trainer.model.register_forward_hook(lambda module, args, out: calls.append(1))
    seen = []
    for _ in range(steps):
        before = len(calls)
        trainer.train_step()
        seen.append(len(calls) - before)
    return seen, trainer


@pytest.mark.parametrize(("every", "start", "want"), [(2, 0.0, [2, 1, 2, 1, 2]), (1, 0.5, [1, 1, 2, 2, 2])])
def test_trainer_gives_model_context_on_the_steps_asked(tmp_path, every, start, want):
    """Model forwards per step: 2 where the model's own context is made (its first forward, then
    the one that trains), 1 elsewhere. `loss.context_every=2`: micro-batches 0, 2 and 4;
    `loss.context_from=0.5` of 4 steps: from step 2 on."""
    ctx = ["loss.context=model", "loss.context_noise=0.5", f"loss.context_every={every}", f"loss.context_from={start}"]
    assert forwards_per_step(tmp_path, ["train.max_steps=4", *ctx])[0] == want


def test_trainer_self_conditions_every_kth_micro_batch(tmp_path):
    """model.self_condition with `loss.self_cond_every=2`: two model forwards on micro-batches 0,
    2 and 4 (the estimate, then the one that trains reading it), one on the others; the
    projection that reads the estimate moves off its zero start."""
    sc = ["train.max_steps=5", "model.self_condition=true", "loss.self_cond_every=2"]
    seen, trainer = forwards_per_step(tmp_path, sc)
    assert seen == [2, 1, 2, 1, 2]
    assert trainer.model.sc_embedder.weight.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trainer_on_cuda(tmp_path):
    """`unimodal train` on a GPU: every per-step statistic is gathered on the device (a CPU tensor
    among them failed the first CUDA run, session 12), the losses stay finite under bf16, and
    the exported model loads."""
    out = tmp_path / "cuda"
    args = ["train", "--out", str(out), *MICRO, "train.max_steps=4", "train.checkpoint_every=2", "eval.tasks=[]"]
    assert main(args) == 0
    rows = read_rows(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["nonfinite"] == 0 for r in rows)
    assert all(p.isfinite().all() for p in Pipeline.from_pretrained(out).model.parameters())


def test_edge_weight_is_refused_for_latents(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", "imagenet256-acdit-b", "--out", str(out), "loss.edge_weight=1"]) == 2
    err = capsys.readouterr().err
    assert "config.loss.edge_weight" in err and "latents" in err and not out.exists()


def test_recipe_names_are_not_shadowed_by_folders(tmp_path, monkeypatch):
    """A run directory named like a recipe (`--out digits-tiny`) in the working directory must not
    hide the recipe of that name; a recipe file given by path still wins."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits-tiny").mkdir()
    assert load_config("digits-tiny").data.builtin == "digits"
    (tmp_path / "mine.yaml").write_text("train: {max_steps: 7}\n")
    assert load_config("mine.yaml").train.max_steps == 7


def test_config_error_exit_status_from_a_process(runs):
    job = runs.get("bad_config")
    job["run"].expect(2)
    assert "train.max_stepz" in job["run"].stderr and "Traceback" not in job["run"].stderr


def test_main_job_end_to_end(runs):
    job = runs.get("main")
    job["run"].expect(0)
    out = job["out"]
    for name in (
        "config.yaml",
        "checkpoints/latest",
        "model/config.json",
        "model/model.safetensors",
        "samples.png",
        "captions.json",
        "metrics.jsonl",
        "loss.png",
        "metrics.json",
    ):
        assert (out / name).is_file(), f"the main job left no {name}"
    latest = (out / "checkpoints" / "latest").read_text().strip()
    assert latest == ckpt(3) and (out / "checkpoints" / latest / COMPLETE).is_file()

    # The resolved config is the default recipe with the overrides, and loads back as a recipe.
    saved = load_config(out / "config.yaml")
    assert saved.to_dict() == load_config(None, MAIN).to_dict()
    assert saved.model["preset"] == "tiny" and saved.train.max_steps == 3

    rows = read_rows(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        for key in ("loss", "text", "image", "lr", "tokens_per_s"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
    metrics = json.loads((out / "metrics.json").read_text())  # the final evaluation
    assert metrics["steps"] == 3 and metrics["nonfinite_skipped"] == 0
    for key in ("text_loss", "image_loss"):
        found = values(metrics, key)
        assert found and all(math.isfinite(v) and v > 0 for v in found), (key, metrics)

    with Image.open(out / "loss.png") as im:
        assert im.format == "PNG"
    with Image.open(out / "samples.png") as im:  # 4 prompts x 1 sample of 32x32, drawn 4x larger
        assert im.format == "PNG" and im.size == (4 * 32, 4 * 4 * 32)
    captions = json.loads((out / "captions.json").read_text())
    assert len(captions) == 2
    assert all(isinstance(c["caption"], str) and c["reference"] for c in captions)

    pipe = Pipeline.from_pretrained(out, num_steps=2)
    assert pipe.tokenizer is not None
    (image,) = pipe.text_to_image(["a small red circle at the top left"], seed=0)
    assert image.size == (32, 32)
    assert "3/3" in job["run"].stderr and "tok_s=" in job["run"].stderr  # the progress bar
    computes = "bf16 autocast" if resolve_precision("auto", "cpu") == "bf16" else "fp32"
    assert f"precision auto: {computes}" in job["run"].stdout  # the recipe's auto, resolved for this CPU


@pytest.mark.parametrize("align", [[], ["model.align_layer=1", "loss.align_weight=0.5"]], ids=["plain", "align"])
def test_zero3_rank_without_noisy_tokens_trains(tmp_path, align):
    """Captioning pairs without noisy copies leave some ranks' micro-batches with no noisy token;
    ZeRO-3 (weights gathered only inside module forwards) must still train: the model runs its
    AdaLN path on zero blocks, so every rank reduces the same gradients; with self-alignment its
    projector, too, joins every rank's graph, and the run logs the term."""
    from unimodal.data.pipeline import batch_stream
    from unimodal.train.trainer import build_model_config, load_tokenizer

    args = [*MICRO[:4], "data.batch_size=1", "data.collate.pack_rows=null", "optim.kind=adamw", "optim.lr=3.0e-3"]
    args += ["train.num_threads=1", "sample.prompts=[]", "sample.captions=0", "eval.tasks=[]"]
    args += ["train.max_steps=4", "train.checkpoint_every=4", "deepspeed=training/deepspeed/zero3.json", *align]
    cfg = load_config(None, args)
    tok = load_tokenizer(cfg.tokenizer, 0)
    mc = build_model_config(cfg, tok)
    streams = [batch_stream(cfg.data, tok, mc, r, 2) for r in (0, 1)]
    noisy = [[bool(next(s).layout.noisy.any()) for _ in range(4)] for s in streams]
    assert not all(all(n) for n in noisy)  # the case this test is about does occur
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER)]
    proc = subprocess.run(
        [*cmd, "--out", str(tmp_path / "run"), *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    logged = [r.get("align") for r in loss_rows(tmp_path / "run")]
    assert len(logged) == 4 and all((a is not None and 0 <= a <= 2) if align else a is None for a in logged)
