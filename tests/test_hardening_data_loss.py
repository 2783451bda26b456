"""Hardening, no data lost: atomic writes under unpredictable names, symlinks never followed, outputs checked
before work, checkpoints that survive a kill."""

from __future__ import annotations

import json
import os

import pytest
from hardening_common import build_cache, train

from sgc_fast import files
from sgc_fast.saliency import key_extra
from sgc_fast.saliency.cache import MaskCache
from sgc_fast.saliency.providers import GroundTruthProvider
from sgc_fast.train import cli

pytestmark = pytest.mark.usefixtures("one_thread")

def test_mask_cache_build_never_follows_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "m.sgcmask"
    for pid in range(os.getpid() - 2, os.getpid() + 3):  # the old predictable names, and the target itself
        (tmp_path / f".m.sgcmask.tmp-{pid}").symlink_to(victim)
    build_cache(target)
    assert victim.read_text() == "precious"
    assert len(MaskCache.open(target, None)) == 6
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(files.TEMP_SUFFIX)]


def test_failed_mask_cache_build_keeps_the_old_cache_and_leaves_no_temp(tmp_path):
    target = tmp_path / "m.sgcmask"
    base, ids = build_cache(target)
    before = target.read_bytes()

    class Failing(GroundTruthProvider):
        def masks_for(self, indices, images):
            if indices[0] >= 2:
                raise RuntimeError("provider died")
            return super().masks_for(indices, images)

    with pytest.raises(RuntimeError, match="provider died"):
        MaskCache.build(target, ids, Failing(base, 32), None, key_extra=key_extra(base, 32), batch_size=2,
                        progress=False)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.sgcmask"]


def test_atomic_write_replaces_a_symlink_instead_of_following_it(tmp_path):
    victim = tmp_path / "victim.json"
    victim.write_text("{}")
    link = tmp_path / "results.json"
    link.symlink_to(victim)
    files.atomic_write_text(link, '{"new": 1}')
    assert victim.read_text() == "{}" and not link.is_symlink() and json.loads(link.read_text()) == {"new": 1}


def test_sgc_eval_checks_its_outputs_before_evaluating(tmp_path, monkeypatch):
    from sgc_fast.eval import cli as eval_cli

    train(tmp_path, "--epochs", "1")
    calls = []
    monkeypatch.setattr(eval_cli, "_evaluate_one", lambda *a, **k: calls.append(1))
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="--out: .* is not a writable folder"):
        eval_cli.main(["--checkpoint", str(tmp_path / "ckpt" / "last.pt"), "--out", str(tmp_path / "file" / "r.json")])
    (tmp_path / "adir").mkdir()
    with pytest.raises(SystemExit, match="--grid: .* is a folder"):
        eval_cli.main(["--checkpoint", str(tmp_path / "ckpt" / "last.pt"), "--out", "", "--grid", str(tmp_path / "adir")])
    assert calls == []


def test_best_is_written_before_last_and_stale_temps_are_removed(tmp_path, monkeypatch, capsys):
    (tmp_path / "ckpt").mkdir()
    stale = tmp_path / "ckpt" / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    order = []
    real = cli.save_checkpoint
    monkeypatch.setattr(cli, "save_checkpoint", lambda path, state: (order.append(path.name), real(path, state)))
    train(tmp_path, "--epochs", "1")
    assert order == ["best.pt", "last.pt"]  # a kill between them repeats the epoch and writes best.pt again
    assert not stale.exists() and "remains of an interrupted checkpoint write" in capsys.readouterr().out


def test_kill_during_the_first_best_write_loses_nothing_on_rerun(tmp_path, monkeypatch):
    real = cli.save_checkpoint

    def killed(path, state):
        if path.name == "best.pt":
            raise KeyboardInterrupt  # the process dies inside the write
        real(path, state)

    monkeypatch.setattr(cli, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, "--epochs", "1")
    assert not (tmp_path / "ckpt" / "last.pt").exists()  # nothing claims the epoch is done
    monkeypatch.setattr(cli, "save_checkpoint", real)
    train(tmp_path, "--epochs", "1")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"best.pt", "last.pt"}


