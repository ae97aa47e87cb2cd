"""``archives._check_member`` on Pythons without ``tarfile.data_filter`` (before 3.11.4 / 3.10.12): its own check
keeps regular files and folders inside the destination and refuses anything else, naming the member."""
import tarfile

import pytest

from comhe.data import archives


def member(name, kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.fixture
def without_data_filter(monkeypatch):
    monkeypatch.delattr(tarfile, "data_filter", raising=False)


@pytest.mark.parametrize("info", [member("cifar-10-batches-py/data_batch_1"),
                                  member("cifar-10-batches-py", tarfile.DIRTYPE)])
def test_files_and_folders_inside_are_accepted(without_data_filter, tmp_path, info):
    assert archives._check_member(info, tmp_path) is None


@pytest.mark.parametrize("info", [member("../escape.txt"), member("/etc/passwd"),
                                  member("batches/link", tarfile.SYMTYPE, "/etc/passwd"),
                                  member("batches/hard", tarfile.LNKTYPE, "batches/data"),
                                  member("batches/fifo", tarfile.FIFOTYPE)])
def test_anything_else_is_refused_by_name(without_data_filter, tmp_path, info):
    with pytest.raises(ValueError) as err:
        archives._check_member(info, tmp_path)
    assert str(err.value) == f"unsafe member {info.name!r}"
