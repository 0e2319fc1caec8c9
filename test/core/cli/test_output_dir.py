"""Models are never overwritten silently and never written by two runs at once: `selfpose adapt` / `pretrain`
refuse an --out that is the input or already holds a model (unless --overwrite / --resume), and lock --out."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from selfpose_core.cli.main import main
from selfpose_core.cli.output_dir import LOCK_NAME, OutputLock
from selfpose_core.errors import OutputError

ROOT = Path(__file__).resolve().parents[3]


def _bundle(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "bundle.yaml").write_text("objects: []\n")
    (path / "weights.pt").write_bytes(b"weights of a 1500-step model")
    return path


def _adapt(tmp_path: Path, model: Path, out: Path, *extra: str) -> list[str]:
    # inputs that do not exist: a refused run must stop before reading any of them
    return ["adapt", "--bag", str(tmp_path / "no_bag"), "--objects", str(tmp_path / "no_objects.yaml"),
            "--model", str(model), "--out", str(out), *extra]


def _pretrain(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--objects", str(tmp_path / "no_objects.yaml"), "--out", str(out), *extra]


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_adapt_never_writes_over_its_input_model(tmp_path, capsys):
    model = _bundle(tmp_path / "M")
    for extra in ((), ("--overwrite",)):
        assert main(_adapt(tmp_path, model, model, *extra)) == 2
        err = _err(capsys)
        assert f"--out {model} is the input model" in err
    assert main(_adapt(tmp_path, model, tmp_path / "x" / ".." / "M", "--overwrite")) == 2  # the same, spelt otherwise
    assert main(_adapt(tmp_path, model, model / "sub")) == 2  # inside it
    assert (model / "weights.pt").read_bytes() == b"weights of a 1500-step model"
    assert sorted(p.name for p in model.iterdir()) == ["bundle.yaml", "weights.pt"]  # no lock file left either


def test_adapt_out_holding_a_bundle_needs_overwrite(tmp_path, capsys):
    model, out = _bundle(tmp_path / "M"), _bundle(tmp_path / "O")
    assert main(_adapt(tmp_path, model, out)) == 2
    err = _err(capsys)
    assert f"--out {out} already holds a model ({out / 'bundle.yaml'})" in err and "--overwrite" in err
    assert main(_adapt(tmp_path, model, out, "--resume")) == 2  # no run of ours to resume there
    assert "--overwrite" in _err(capsys)
    # with --overwrite the run goes on (and stops at the missing objects.yaml here)
    assert main(_adapt(tmp_path, model, out, "--overwrite")) == 2
    assert "no_objects.yaml" in _err(capsys)
    assert (out / "weights.pt").read_bytes() == b"weights of a 1500-step model" and not (out / LOCK_NAME).exists()


def test_adapt_resume_of_its_own_run_is_allowed(tmp_path, capsys):
    model, out = _bundle(tmp_path / "M"), _bundle(tmp_path / "O")
    (out / "work").mkdir()
    (out / "work" / "state.yaml").write_text("done: []\n")
    assert main(_adapt(tmp_path, model, out)) == 2
    assert "--resume to continue that run" in _err(capsys)
    assert main(_adapt(tmp_path, model, out, "--resume")) == 2
    assert "no_objects.yaml" in _err(capsys)
    assert main(_adapt(tmp_path, model, out, "--resume", "--overwrite")) == 2
    assert "exclude each other" in _err(capsys)


def test_pretrain_out_holding_a_model_needs_overwrite_or_resume(tmp_path, capsys):
    out = _bundle(tmp_path / "M")
    assert main(_pretrain(tmp_path, out)) == 2
    err = _err(capsys)
    assert f"--out {out} already holds a model" in err and "--overwrite" in err
    (out / "bundle.yaml").unlink()
    (out / "train").mkdir()
    (out / "train" / "checkpoint.pt").write_bytes(b"step 1500")
    assert main(_pretrain(tmp_path, out)) == 2
    assert "checkpoint.pt" in (err := _err(capsys)) and "--resume" in err
    for flag in ("--resume", "--overwrite"):  # accepted: the run goes on and stops at the missing objects.yaml
        assert main(_pretrain(tmp_path, out, flag)) == 2
        assert "no_objects.yaml" in _err(capsys)
    assert (out / "train" / "checkpoint.pt").read_bytes() == b"step 1500"


HOLDER = textwrap.dedent("""
    import sys, time
    from selfpose_core.cli.output_dir import OutputLock
    with OutputLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_second_run_into_a_locked_out_is_refused(tmp_path, capsys):
    out = tmp_path / "O"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        model = _bundle(tmp_path / "M")
        for argv in (_adapt(tmp_path, model, out), _pretrain(tmp_path, out)):
            assert main(argv) == 2
            err = _err(capsys)
            assert f"in use by another selfpose run (pid {holder.pid}, lock file {out / LOCK_NAME})" in err
        assert (out / LOCK_NAME).read_text().strip() == str(holder.pid)  # the holder's lock is left alone
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up (kill -9): its lock file is stale and taken over
    assert main(_adapt(tmp_path, model, out)) == 2
    assert "no_objects.yaml" in _err(capsys)
    assert not (out / LOCK_NAME).exists()


def test_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(f"{dead.pid}\n")
    with caplog.at_level(logging.WARNING), OutputLock(tmp_path) as lock:
        assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(OutputError, match=f"pid {os.getpid()}, lock file"):
            OutputLock(tmp_path).acquire()  # one holder at a time, in one process too
    assert f"taking over the stale lock {lock.path} of pid {dead.pid} (no longer running)" in caplog.text
    assert not lock.path.exists()


def test_lock_removes_the_directory_it_created_when_nothing_was_written(tmp_path):
    with OutputLock(tmp_path / "new"):
        assert (tmp_path / "new").is_dir()
    assert not (tmp_path / "new").exists()
    with OutputLock(tmp_path / "kept"):
        (tmp_path / "kept" / "bundle.yaml").write_text("{}")
    assert (tmp_path / "kept" / "bundle.yaml").is_file()
    with pytest.raises(OutputError, match="cannot create --out"):
        OutputLock(tmp_path / "kept" / "bundle.yaml" / "x").acquire()
