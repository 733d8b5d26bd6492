"""Trustworthy run folders and one-line errors, on real processes and real files (docs/reliability.md).

1. one writer per run folder: a second training on a folder in use is refused; a finished run is not
   overwritten without --overwrite (which moves it aside); a stale lock is taken over;
2. a damaged newest checkpoint is skipped for the previous complete one, and the resumed run ends exactly like
   an uninterrupted one; none usable is one line;
3. checkpoints never run code: a planted ``__reduce__`` does not execute on evaluate, export or --resume;
4. config values are checked before any work, one line naming the key;
5. storage and OS errors (no credentials, unreachable endpoint, read-only or file-blocked output, a full disk
   during a checkpoint write) are one line naming the URL or path, exit code 2, in bounded time.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from helpers import PY, REPO, SMALL, close, last_json, run_cli, run_env, train

CKPT_FILE = "mp_rank_00_model_states.pt"


def _one_line_error(proc, *fragments):
    """Exit code 2, stderr's last line is the error and names every fragment, and no traceback anywhere."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert ": error: " in line, line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def _tags(run: Path):
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())


# -- 1. one writer --------------------------------------------------------------------------------------
def test_a_second_training_on_a_folder_in_use_is_refused(synth_ds, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen([PY, "-m", "metammf_dist", "train", "configs/tiktok.yaml", f"data.path={synth_ds}",
                              f"run_dir={run}", "train.epochs=60", "train.seed=7", *SMALL, "train.patience=100"],
                             cwd=REPO, env=run_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / ".lock").exists() or not (run / ".lock").read_text():
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took its lock"
            time.sleep(0.05)
        second = train(synth_ds, run, "train.seed=8", epochs=3, check=False)
        assert first.poll() is None, "the first run ended before the second started: make it longer"
        line = _one_line_error(second, str(run), "in use by another training", f"pid {first.pid}")
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-3000:]
    # the folder is the first run's alone
    assert "seed: 7" in (run / "config.yaml").read_text() and "seed: 8" not in (run / "config.yaml").read_text()
    assert json.loads(out.strip().splitlines()[-1]) == json.loads((run / "final_metrics.json").read_text())
    assert not (run / ".lock").exists() and "rank" not in line


def test_a_finished_run_is_kept_unless_overwrite_moves_it_aside(synth_ds, tmp_path):
    run = tmp_path / "run"
    first = last_json(train(synth_ds, run, epochs=1))
    rows = (run / "metrics.csv").read_text()
    again = train(synth_ds, run, epochs=1, check=False)
    _one_line_error(again, str(run), "already holds a run", "--resume", "--overwrite")
    assert (run / "metrics.csv").read_text() == rows  # nothing appended
    both = run_cli("train", "configs/tiktok.yaml", f"data.path={synth_ds}", f"run_dir={run}", "--resume",
                   "--overwrite", *SMALL, check=False)
    _one_line_error(both, "--resume", "--overwrite")
    second = last_json(train(synth_ds, run, "--overwrite", "train.seed=9", epochs=1))
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1  # the first run, whole, beside the new one
    assert json.loads((aside[0] / "final_metrics.json").read_text()) == first
    assert _tags(aside[0]) and (aside[0] / "metrics.csv").read_text() == rows
    assert json.loads((run / "final_metrics.json").read_text()) == second and "seed: 9" in (run / "config.yaml").read_text()


def test_a_stale_lock_is_reported_and_taken_over(synth_ds, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"pid": 999999, "host": "gone-host", "started": 0}))
    proc = train(synth_ds, run, "--resume", epochs=1)
    assert "stale lock" in proc.stderr and "pid 999999 on host gone-host" in proc.stderr
    assert last_json(proc)["recall@20"] > 0 and not (run / ".lock").exists()


# -- 2. damaged newest checkpoint --------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate", "empty", "no_marker"])
def test_resume_skips_a_damaged_newest_checkpoint(synth_ds, tmp_path, damage):
    straight = last_json(train(synth_ds, tmp_path / "straight", epochs=2))
    run = tmp_path / "run"
    train(synth_ds, run, epochs=2)
    newest = run / "checkpoints" / _tags(run)[-1]
    assert newest.name == "epoch0002-step0000000"
    target = newest / CKPT_FILE
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "empty":
        target.write_bytes(b"")
    else:
        (newest / "COMPLETE.json").unlink()
    resumed = train(synth_ds, run, "--resume", epochs=2)
    warning = [line for line in resumed.stderr.splitlines() if "checkpoint skipped" in line]
    assert len(warning) == 1 and str(newest) in warning[0], resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    assert "resumed from epoch0001-step0000000" in resumed.stderr
    assert close(last_json(resumed), straight, 1e-6), (last_json(resumed), straight)


def test_no_usable_checkpoint_is_one_line(synth_ds, tmp_path):
    run = tmp_path / "run"
    train(synth_ds, run, "train.keep_checkpoints=1", epochs=1)
    for tag in _tags(run):
        (run / "checkpoints" / tag / CKPT_FILE).write_bytes(b"\0" * 10)
    for proc in (train(synth_ds, run, "--resume", epochs=2, check=False), run_cli("evaluate", str(run), check=False)):
        _one_line_error(proc, "no usable checkpoint", str(run / "checkpoints"))


# -- 3. no code from checkpoints ----------------------------------------------------------------------------
class _Planted:
    """Unpickling this runs ``touch <path>``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


class _Harmless:
    """A plain object of a class outside the safe list (datetime.date): refused unless trusted."""

    def __reduce__(self):
        import datetime

        return datetime.date, (2026, 1, 1)


def _plant(tag_dir: Path, obj, rehash: bool) -> None:
    """Put ``obj`` into the model-states file's pickle (the rest of the file unchanged); with ``rehash`` the
    marker's digests are rewritten too, as someone handing over a run folder could."""
    import torch

    from metammf_dist.train.checkpoint_check import MARKER, file_digests

    path = tag_dir / CKPT_FILE
    blob = torch.load(path, map_location="cpu", weights_only=False)
    blob["planted"] = obj
    torch.save(blob, path)
    with zipfile.ZipFile(path) as z:  # the object really is in the pickle
        assert any(n.endswith("data.pkl") for n in z.namelist())
    if rehash:
        marker = json.loads((tag_dir / MARKER).read_text())
        marker["files"] = file_digests(tag_dir)
        (tag_dir / MARKER).write_text(json.dumps(marker))


@pytest.mark.parametrize("rehash", [False, True])
def test_a_planted_reduce_does_not_run(synth_ds, tmp_path, rehash):
    run = tmp_path / "run"
    train(synth_ds, run, "train.keep_checkpoints=1", epochs=1)
    assert len(_tags(run)) == 1
    proof = tmp_path / "PWNED"
    _plant(run / "checkpoints" / _tags(run)[0], _Planted(proof), rehash)
    expected = "holds posix.system" if rehash else "(truncated or altered)"
    for proc in (run_cli("evaluate", str(run), check=False), run_cli("export", str(run), check=False),
                 train(synth_ds, run, "--resume", epochs=2, check=False)):
        _one_line_error(proc, "no usable checkpoint")
        assert expected in proc.stderr, proc.stderr[-2000:]
        assert not proof.exists(), "the planted object ran"


def test_trust_checkpoint_loads_a_pickle_outside_the_safe_list(synth_ds, tmp_path):
    run = tmp_path / "run"
    metrics = last_json(train(synth_ds, run, "train.keep_checkpoints=1", epochs=1))
    _plant(run / "checkpoints" / _tags(run)[0], _Harmless(), rehash=True)
    _one_line_error(run_cli("evaluate", str(run), check=False), "holds datetime.date", "--trust-checkpoint")
    trusted = last_json(run_cli("evaluate", str(run), "--trust-checkpoint"))
    assert close(trusted, metrics, 1e-6)


def test_the_scanner_reads_globals_without_running_them(tmp_path):
    import torch

    from metammf_dist.train.checkpoint_check import unsafe_globals

    proof = tmp_path / "PWNED"
    torch.save({"w": torch.ones(3), "x": _Planted(proof), "s": {1, 2}}, tmp_path / "a.pt")
    assert unsafe_globals(tmp_path / "a.pt") == ["posix.system"] and not proof.exists()
    torch.save({"w": torch.ones(3, dtype=torch.float16), "shape": torch.Size([3])}, tmp_path / "b.pt")
    assert unsafe_globals(tmp_path / "b.pt") == []
    (tmp_path / "c.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        unsafe_globals(tmp_path / "c.pt")


# -- 4. config values, before any work ---------------------------------------------------------------------
@pytest.mark.parametrize("override,key", [
    ("eval.metric=recall@7", "eval.metric"), ("eval.metric=recall@20+ndcg@7", "eval.metric"),
    ("eval.metric=recall@20+recall@20", "eval.metric"), ("eval.ks=[0]", "eval.ks[0]"), ("eval.ks=[-5]", "eval.ks[0]"),
    ("train.lr=-0.01", "train.lr"), ("model.fusion_dims=[0,32]", "model.fusion_dims[0]"),
    ("train.epochs=-1", "train.epochs"), ("train.max_steps_per_epoch=-3", "train.max_steps_per_epoch"),
    ("train.num_workers=-1", "train.num_workers"), ("train.fanouts=[0,5]", "train.fanouts[0]"),
])
def test_bad_config_values_are_one_line_before_any_work(synth_ds, tmp_path, override, key, capsys):
    from metammf_dist.cli import main

    run = tmp_path / "run"
    code = main(["train", "configs/tiktok.yaml", f"data.path={synth_ds}", f"run_dir={run}", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"config key '{key}'" in err[0], err
    assert not run.exists()  # no run folder, no process group, no data read


def test_missing_data_path_is_named(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: {scorer: mf}\n")
    proc = run_cli("train", str(config), f"run_dir={tmp_path / 'run'}", check=False)
    _one_line_error(proc, "config key 'data.path'")


# -- 5. storage and OS errors ----------------------------------------------------------------------------
def _s3_env(**extra):
    env = run_env()
    for key in list(env):
        if key.startswith("AWS_"):
            del env[key]
    # never reach beyond this machine: no instance-metadata lookup, no credential files
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               AWS_CONFIG_FILE="/nonexistent", **extra)
    return env


@pytest.mark.parametrize("credentials", [False, True])
@pytest.mark.parametrize("command", ["info", "train", "prepare"])
def test_unreachable_or_unauthorised_s3_is_one_line_in_bounded_time(tmp_path, command, credentials):
    url = "s3://no-such-bucket/ds"
    opts = 'data.storage_options={client_kwargs: {endpoint_url: "http://127.0.0.1:9"}}'
    args = {"info": ["info", url], "train": ["train", "configs/tiktok.yaml", f"data.path={url}", opts,
                                              f"run_dir={tmp_path / 'run'}"],
            "prepare": ["prepare", "mmrec", str(REPO.parent / "shared" / "data" / "tiktok"), url,
                        "--storage-options", '{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}']}[command]
    if command == "info":
        args += ["--storage-options", '{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}']
    env = _s3_env(**({"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"} if credentials else {}))
    started = time.monotonic()
    proc = subprocess.run([PY, "-m", "metammf_dist", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    seconds = time.monotonic() - started
    line = _one_line_error(proc, "s3://no-such-bucket/ds")
    assert ("endpoint" if credentials else "no credentials") in line, line
    assert seconds < 30, f"took {seconds:.0f} s"


def _mount_tmpfs(path: Path, size: str, read_only: bool = False) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_prepare_into_a_read_only_or_file_blocked_location_is_one_line(tmp_path):
    tiktok = str(REPO.parent / "shared" / "data" / "tiktok")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    _one_line_error(run_cli("prepare", "mmrec", tiktok, str(blocker / "ds"), check=False),
                    f"{blocker} is a file, not a folder")
    ro = tmp_path / "ro"
    if _mount_tmpfs(ro, "1m", read_only=True):
        try:
            _one_line_error(run_cli("prepare", "mmrec", tiktok, str(ro / "ds"), check=False), str(ro / "ds"),
                            "Read-only file system")
        finally:
            _umount(ro)
    elif os.geteuid() != 0:  # no mount without root: a folder without write permission says the same
        ro.mkdir()
        ro.chmod(0o555)
        _one_line_error(run_cli("prepare", "mmrec", tiktok, str(ro / "ds"), check=False), str(ro / "ds"))
    else:
        pytest.fail("root but cannot mount a read-only tmpfs")
    # --overwrite over a regular file replaces it and leaves nothing behind
    out = run_cli("prepare", "mmrec", tiktok, str(blocker), "--overwrite")
    assert "wrote" in out.stdout and (blocker / "dataset.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "ro"]


def test_a_full_disk_during_a_checkpoint_write_is_one_line_and_nothing_is_marked(synth_ds, tmp_path):
    """A tmpfs with room for the run folder's first files but not a checkpoint (or, where no tmpfs can be
    mounted, a file-size limit on the process)."""
    disk = tmp_path / "disk"
    run = disk / "run"
    wide = "model.fusion_dims=[1024,8]"  # a ~2.5 MB checkpoint (weights + Adam states); the other files are small
    train(synth_ds, tmp_path / "warm", wide, epochs=1)  # DeepSpeed's comm op compiled before any limit applies
    mounted = _mount_tmpfs(disk, "1m")
    try:
        if mounted:
            proc = train(synth_ds, run, wide, "train.log_every=0", epochs=1, check=False)
            line = _one_line_error(proc, str(run / "checkpoints"), "no space left on device")
        else:
            import resource
            import signal

            def limit():
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

            cmd = [PY, "-m", "metammf_dist", "train", "configs/tiktok.yaml", f"data.path={synth_ds}",
                   f"run_dir={run}", "train.epochs=1", "train.log_every=0", *SMALL, wide]
            proc = subprocess.run(cmd, cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=300,
                                  preexec_fn=limit)
            line = _one_line_error(proc, str(run / "checkpoints"), "writing failed", "file-size limit")
        assert "not marked complete" in line
        assert not list((run / "checkpoints").rglob("COMPLETE.json")) and not (run / "checkpoints" / "latest.json").exists()
    finally:
        if mounted:
            _umount(disk)
