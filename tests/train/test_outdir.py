"""The output folder: foreign files are refused and never touched; writes are atomic."""
from __future__ import annotations

import pytest

from peftkb.errors import UsageError
from peftkb.train import outdir


def test_a_folder_with_a_user_file_is_refused_and_the_file_kept(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"holds files peftkb did not write \(notes.txt\)"):
        outdir.prepare(tmp_path, resume=False, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_previous_run_needs_resume_or_overwrite(tmp_path):
    outdir.write_json(tmp_path / outdir.MARKER, {"method": "lora"})
    (tmp_path / outdir.METRICS).write_text("{}\n")
    with pytest.raises(UsageError, match="pass --resume to continue it or --overwrite"):
        outdir.prepare(tmp_path, resume=False, overwrite=False)
    with pytest.raises(UsageError, match="no checkpoint.pt"):
        outdir.prepare(tmp_path, resume=True, overwrite=False)
    outdir.prepare(tmp_path, resume=False, overwrite=True)
    assert list(tmp_path.iterdir()) == []


def test_leftover_temporary_files_of_an_interrupted_write_are_removed(tmp_path):
    (tmp_path / "checkpoint.pt.tmp.4242").write_bytes(b"half")
    (tmp_path / "merged.tmp.17").mkdir()
    outdir.prepare(tmp_path, resume=False, overwrite=False)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_the_last_good_file_and_no_temporary(tmp_path):
    path = tmp_path / outdir.CHECKPOINT
    outdir.write_with(path, lambda tmp: tmp.write_bytes(b"good"))

    def disk_full(tmp):
        tmp.write_bytes(b"half of it")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        outdir.write_with(path, disk_full)
    assert path.read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == [outdir.CHECKPOINT]


def test_interrupting_a_write_leaves_the_last_good_file(tmp_path):
    path = tmp_path / outdir.ADAPTER
    outdir.write_with(path, lambda tmp: tmp.write_bytes(b"v1"))

    def interrupted(tmp):
        tmp.write_bytes(b"v2 partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        outdir.write_with(path, interrupted)
    assert path.read_bytes() == b"v1" and len(list(tmp_path.iterdir())) == 1


def test_a_folder_replaces_the_previous_one(tmp_path):
    def save(tmp, text):
        tmp.mkdir()
        (tmp / "config.json").write_text(text)

    outdir.write_with(tmp_path / outdir.MERGED, lambda tmp: save(tmp, "1"))
    outdir.write_with(tmp_path / outdir.MERGED, lambda tmp: save(tmp, "2"))
    assert (tmp_path / outdir.MERGED / "config.json").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == [outdir.MERGED]
