"""Output folders of the download and preprocess stages that cannot be written: refused before any
work, in one line naming the folder and the setting (`gaugan.data.io.require_writable`, an
`OutputNotWritable`).

The tests run as root too, which writes into read-only folders anyway: each makes a folder
unwritable in a way that holds for root (a file where the folder should be), or stands in for the
permission check (`os.access`) or for the probe file (a read-only file system), and checks that
nothing was read, downloaded or written.
"""

from __future__ import annotations

import errno
import os
import tempfile

import pytest

from gaugan.data.io import OutputNotWritable
from gaugan.data.preprocess import preprocess
from stages import download as download_stage
from tests.support import data_config, make_custom, no_work


def deny_writing_to(monkeypatch, folder):
    """``os.access`` says ``folder`` is not writable (as it says for a non-root user of a read-only folder)."""
    real = os.access

    def access(path, mode, *args, **kwargs):
        if os.path.abspath(path) == str(folder) and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def test_a_file_where_the_store_folder_should_be(tmp_path, monkeypatch):
    """data.processed_dir under a file: a traceback (NotADirectoryError) after every file was read."""
    make_custom(tmp_path / "raw" / "custom", values=[0, 1])
    (tmp_path / "blocker").write_text("a file")
    monkeypatch.setattr("gaugan.data.preprocess.resolve_folder", no_work)
    cfg = data_config("custom", root="raw", processed_dir="blocker/store", custom={"num_classes": 2})
    with pytest.raises(OutputNotWritable) as info:
        preprocess(cfg.data, tmp_path, progress=False)
    assert str(info.value) == (
        f"{tmp_path / 'blocker'}: the store cannot be written here (for {tmp_path / 'blocker' / 'store'}): it is a "
        f"file, not a folder. Move it away, or set data.processed_dir to a folder you can write to")


def test_a_read_only_reports_folder_is_refused_before_the_store_is_written(tmp_path, monkeypatch):
    """reports/data read-only: the store was written, then a traceback (PermissionError) for the histogram."""
    make_custom(tmp_path / "raw" / "custom", values=[0, 1])
    reports = tmp_path / "reports" / "data"
    reports.mkdir(parents=True)
    deny_writing_to(monkeypatch, reports)
    monkeypatch.setattr("gaugan.data.preprocess.resolve_folder", no_work)
    cfg = data_config("custom", root="raw", processed_dir="store", custom={"num_classes": 2})
    with pytest.raises(OutputNotWritable) as info:
        preprocess(cfg.data, tmp_path, reports_dir=reports, progress=False)
    assert str(info.value) == (f"{reports}: the dataset's reports cannot be written here: permission denied. Make "
                               f"it writable (the folder is not a setting)")
    assert not (tmp_path / "store").exists()


def test_a_read_only_file_system_is_found_by_the_probe_file(tmp_path, monkeypatch):
    """``os.access`` may say yes where writing fails (a read-only mount seen through some file systems)."""

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr("gaugan.data.preprocess.resolve_folder", no_work)
    cfg = data_config("custom", root="raw", processed_dir="store", custom={"num_classes": 2})
    with pytest.raises(OutputNotWritable, match=rf"^{tmp_path}: the store cannot be written here \(for "
                                        rf"{tmp_path / 'store'}\): Read-only file system\. Make it writable, or set "
                                        rf"data.processed_dir to a folder you can write to$"):
        preprocess(cfg.data, tmp_path, progress=False)


def test_the_probe_leaves_nothing_behind(tmp_path):
    from gaugan.data.io import require_writable

    require_writable(tmp_path / "new" / "folder", "data.processed_dir", "the store")
    assert list(tmp_path.iterdir()) == []


def test_a_download_into_an_unwritable_data_root_is_refused_before_any_download(tmp_path, monkeypatch):
    """data.root naming a file: a traceback (FileExistsError) from the first download."""
    (tmp_path / "raw").write_text("a file")
    monkeypatch.setattr("gaugan.data.download.download_file", no_work)
    with pytest.raises(OutputNotWritable) as info:
        download_stage.run(data_config("facades", root="raw"), tmp_path, progress=False)
    assert str(info.value) == (
        f"{tmp_path / 'raw'}: the downloaded dataset cannot be written here (for {tmp_path / 'raw' / 'facades'}): it "
        f"is a file, not a folder. Move it away, or set data.root to a folder you can write to")


@pytest.mark.parametrize("dataset, what", [("landscapes", "generated"), ("facades", "downloaded")])
def test_a_read_only_dataset_folder_is_refused_before_the_work(dataset, what, tmp_path, monkeypatch):
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    deny_writing_to(monkeypatch, raw)
    monkeypatch.setattr("gaugan.data.download.download_file", no_work)
    monkeypatch.setattr("gaugan.data.check.parallel_map", no_work)
    with pytest.raises(OutputNotWritable, match=rf"^{raw}: the {what} dataset cannot be written here \(for "
                                        rf"{raw / dataset}\): permission denied\. Make it writable, or set data.root "
                                        rf"to a folder you can write to$"):
        download_stage.run(data_config(dataset), tmp_path, progress=False)


def test_the_download_record_folder_is_checked_before_the_work(tmp_path, monkeypatch):
    """data/download.json is written last: a read-only data/ used to fail after the whole download."""
    make_custom(tmp_path / "data" / "raw" / "custom", values=[0, 1])
    deny_writing_to(monkeypatch, tmp_path / "data")
    monkeypatch.setattr("stages.download.list_custom", no_work)
    with pytest.raises(OutputNotWritable, match=rf"^{tmp_path / 'data'}: the download record \(download.json\) cannot be "
                                        rf"written here: permission denied\. Make it writable \(the folder is not a "
                                        rf"setting\)$"):
        download_stage.run(data_config("custom"), tmp_path, progress=False)
