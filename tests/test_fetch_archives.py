"""Safe extraction: every member that would land outside the target folder refuses the whole
archive in one line, whatever the format; members inside are written."""

from __future__ import annotations

import io
import tarfile

import pytest

from hjax.data import archives
from fetch_server import tar_gz_bytes, write, zip_bytes


def _tar_with(tmp_path, info: tarfile.TarInfo):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        t.addfile(info)
    return write(tmp_path / "a.tar", buf.getvalue())


@pytest.mark.parametrize("name,why", [("/etc/cron.d/x", "an absolute path"),
                                      ("C:/Windows/x", "an absolute path"),
                                      ("top/../../x", "'..' leads out"),
                                      ("..\\x", "'..' leads out")])
def test_unsafe_member_names_are_refused_in_zips_and_tars(tmp_path, name, why):
    for path in (write(tmp_path / "a.zip", zip_bytes({"top/ok.txt": b"1", name: b"x"})),
                 write(tmp_path / "a.tar.gz", tar_gz_bytes({"top/ok.txt": b"1", name: b"x"}))):
        out = tmp_path / f"out-{path.name}"
        with pytest.raises(archives.UnsafeArchiveError) as e:
            archives.extract(path, out, lambda p: p)
        msg = str(e.value)
        assert "\n" not in msg and path.name in msg and why in msg and repr(name) in msg


def test_links_out_of_the_target_and_devices_are_refused(tmp_path):
    link = tarfile.TarInfo("top/up")
    link.type, link.linkname = tarfile.SYMTYPE, "../../outside"
    with pytest.raises(archives.UnsafeArchiveError, match="a link to '../../outside'"):
        archives.extract(_tar_with(tmp_path, link), tmp_path / "o1", lambda p: p)
    hard = tarfile.TarInfo("top/h")
    hard.type, hard.linkname = tarfile.LNKTYPE, "../secret"
    with pytest.raises(archives.UnsafeArchiveError, match="a link to '../secret'"):
        archives.extract(_tar_with(tmp_path, hard), tmp_path / "o2", lambda p: p)
    dev = tarfile.TarInfo("top/dev")
    dev.type = tarfile.CHRTYPE
    with pytest.raises(archives.UnsafeArchiveError, match="a device or special file"):
        archives.extract(_tar_with(tmp_path, dev), tmp_path / "o3", lambda p: p)


def test_members_inside_are_written_renamed_and_links_inside_kept(tmp_path):
    path = write(tmp_path / "a.tar.gz", tar_gz_bytes(
        {"kfold/a/b.jpg": b"img", "junk/c": b"skip"}, {"kfold/a/same.jpg": "b.jpg"}))
    out = tmp_path / "out"
    n = archives.extract(path, out, lambda p: p[6:] if p.startswith("kfold/") else None)
    assert n == 2 and (out / "a" / "b.jpg").read_bytes() == b"img"
    assert (out / "a" / "same.jpg").read_bytes() == b"img" and not (out / "junk").exists()
