"""ImageNet weights without torch: the torch-zip reader against what torch read from the same
file (tests/data, made once with torch by tests/make_torch_state_dict.py), `fetch_data
--weights` and `--pretrained=imagenet` against a local server (127.0.0.1), and the download
layer's Google Drive confirmation step."""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hjax.cli import fetch_data
from hjax.data import download, weights
from hjax.data.download import FetchError, Source, format_progress
from hjax.data.torch_zip import TorchFileError, read_torch_zip
from fetch_server import server, write  # noqa: F401 (server: a fixture)

DATA = Path(__file__).parent / "data"
PTH = DATA / "torch_state_dict.pth"
SHA = hashlib.sha256(PTH.read_bytes()).hexdigest()


@pytest.fixture
def fixture_source(monkeypatch):
    """resnet18's source replaced by the fixture, named by torch hub's rule."""
    source = Source(f"resnet18-{SHA[:8]}.pth", None, sha256_prefix=SHA[:8])
    monkeypatch.setitem(weights.WEIGHT_SOURCES, "resnet18", (source,))
    return source


def test_torch_zip_reader_gives_exactly_what_torch_read():
    ours = read_torch_zip(PTH)
    with np.load(DATA / "torch_state_dict.npz") as ref:
        assert list(ours) == ref.files
        for key in ref.files:
            assert ours[key].dtype == ref[key].dtype and ours[key].shape == ref[key].shape, key
            np.testing.assert_array_equal(ours[key], ref[key], err_msg=key)
    assert ours["bn1.num_batches_tracked"].dtype == np.int64
    assert ours["layer1.0.conv1.weight"].dtype == np.float16
    assert ours["fc.weight"].shape == (5, 6) and ours["fc.bias"].shape == (3,)   # views


@pytest.mark.torchvision
def test_torch_reader_and_torch_free_reader_agree_where_torch_is_installed():
    # The .npz above makes the same comparison without torch; this one runs torch itself.
    pytest.importorskip("torch")
    from hjax.models import torchvision_weights as tw
    theirs, ours = tw.read_pth(str(PTH)), read_torch_zip(PTH)
    assert list(theirs) == list(ours)
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def _torch_zip(pkl: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("evil/data.pkl", pkl)
    return buf.getvalue()


class _Boom:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned",))


def test_torch_zip_reader_runs_no_pickled_code(tmp_path):
    path = write(tmp_path / "evil.pth", _torch_zip(pickle.dumps({"w": _Boom()}, protocol=2)))
    with pytest.raises(TorchFileError) as e:
        read_torch_zip(path)
    assert "refusing to unpickle global" in str(e.value) and "system" in str(e.value)
    not_zip = write(tmp_path / "old.pth", b"\x80\x02legacy")
    with pytest.raises(TorchFileError, match="not a torch zip file"):
        read_torch_zip(not_zip)


def test_fetch_weights_stores_the_featurizer_as_npz(tmp_path, server, fixture_source, capsys):
    server.files[fixture_source.file] = PTH.read_bytes()
    assert fetch_data.main([f"--data_dir={tmp_path}", f"--mirror={server.url}",
                            "--weights=resnet18"]) == 0
    out = weights.weights_path("resnet18", tmp_path)
    with np.load(out) as got, np.load(DATA / "torch_state_dict.npz") as ref:
        want = {k for k in ref.files if not k.startswith("fc.") and "num_batches" not in k}
        assert set(got.files) == want
        for k in want:
            assert got[k].dtype == np.float32
            np.testing.assert_array_equal(got[k], ref[k].astype(np.float32))
    assert "ImageNet weights ready" in capsys.readouterr().err
    assert not (tmp_path / "downloads" / fixture_source.file).exists()


def test_wrong_checksum_is_one_line_leaves_nothing_and_a_second_run_succeeds(
        tmp_path, server, fixture_source, capsys):
    good = PTH.read_bytes()
    server.files[fixture_source.file] = good[:100] + bytes([good[100] ^ 1]) + good[101:]
    argv = [f"--data_dir={tmp_path}", f"--mirror={server.url}", "--weights=resnet18"]
    assert fetch_data.main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and f"does not start with {SHA[:8]}" in err[0]
    assert "--from_archive=PATH" in err[0]
    assert not weights.weights_path("resnet18", tmp_path).exists()
    assert not list((tmp_path / "downloads").glob("*"))          # no .part to resume
    server.files[fixture_source.file] = PTH.read_bytes()
    assert fetch_data.main(argv) == 0


def test_weights_from_a_file_of_yours_are_checked_and_need_no_network(
        tmp_path, server, fixture_source, capsys):
    given = write(tmp_path / "copy" / fixture_source.file, PTH.read_bytes())
    argv = [f"--data_dir={tmp_path}", "--weights=resnet18", f"--from_archive={given}"]
    assert fetch_data.main(argv) == 0
    assert weights.weights_path("resnet18", tmp_path).is_file() and given.is_file()
    other = write(tmp_path / "other.pth", b"PK not this one")
    assert fetch_data.main([*argv[:2], f"--from_archive={other}", "--force"]) == 1
    assert f"does not start with {SHA[:8]}" in capsys.readouterr().err
    assert server.requests == []


def test_pretrained_imagenet_fetches_when_missing_and_says_so(tmp_path, server,
                                                               fixture_source, monkeypatch):
    server.files[fixture_source.file] = PTH.read_bytes()
    monkeypatch.setenv(download.MIRROR_ENV_VAR, server.url)
    said = []
    path = weights.resolve_pretrained("imagenet", "resnet18", tmp_path, said.append)
    assert path == str(weights.weights_path("resnet18", tmp_path)) and Path(path).is_file()
    assert any("fetching torchvision's ImageNet weights" in s for s in said)
    requests = len(server.requests)
    assert weights.resolve_pretrained("imagenet", "resnet18", tmp_path, said.append) == path
    assert len(server.requests) == requests                        # fetched once
    assert weights.resolve_pretrained("/w/r18.npz", "resnet18", tmp_path, said.append) == \
        "/w/r18.npz"
    with pytest.raises(weights.ConfigError, match="no ImageNet weights for --arch=resnet34"):
        weights.resolve_pretrained("imagenet", "resnet34", tmp_path, said.append)


def test_mirror_without_the_pth_falls_back_to_the_safetensors_copy(tmp_path, server,
                                                                   monkeypatch):
    from test_resnet import write_safetensors
    with np.load(DATA / "torch_state_dict.npz") as ref:
        state = {k: ref[k] for k in ("conv1.weight", "bn1.bias", "bn1.num_batches_tracked")}
    path = tmp_path / "r50.safetensors"
    write_safetensors(path, {k: ("I64" if v.dtype == np.int64 else "F32", v.tobytes(), v.shape)
                             for k, v in state.items()})
    pth, st = weights.WEIGHT_SOURCES["resnet50"]
    assert st.file == "resnet50.tv_in1k.safetensors" and st.url is None and len(st.sha256) == 64
    st = st._replace(sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setitem(weights.WEIGHT_SOURCES, "resnet50", (pth, st))
    server.files[st.file] = path.read_bytes()          # the mirror lacks the .pth: 404
    out = weights.fetch_weights("resnet50", tmp_path / "d", mirror=server.url)
    with np.load(out) as got:
        assert sorted(got.files) == ["bn1.bias", "conv1.weight"]
        np.testing.assert_array_equal(got["conv1.weight"], state["conv1.weight"])
    assert [p for p, _ in server.requests] == [pth.file, st.file]


def test_the_published_sources_follow_torch_hubs_rule():
    for arch, sources in weights.WEIGHT_SOURCES.items():
        pth = sources[0]
        assert pth.file.startswith(arch) and pth.url.endswith(pth.file)
        assert pth.file.rsplit("-", 1)[1].removesuffix(".pth") == pth.sha256_prefix


def test_drive_confirmation_page_is_followed(tmp_path, server):
    server.files["big.zip"] = b"z" * 5000
    server.faults["big.zip"] = ["drive"]
    source = Source("big.zip", None, drive=True)
    got = download.download(source, tmp_path / "big.zip", url=f"{server.url}/big.zip")
    assert got.read_bytes() == b"z" * 5000
    assert [p for p, _ in server.requests] == ["big.zip", "big.zip"]


def test_drive_quota_page_is_one_line(tmp_path, server):
    server.faults["big.zip"] = ["quota"]
    with pytest.raises(FetchError, match="download quota for this file is exceeded"):
        download.download(Source("big.zip", None, drive=True), tmp_path / "big.zip",
                          url=f"{server.url}/big.zip")
    assert not (tmp_path / "big.zip").exists()


def test_progress_line_has_bytes_rate_and_eta():
    line = format_progress("PACS.zip", 60_000_000, 180_000_000, 0, 10.0)
    assert line == "PACS.zip  60.0 / 180.0 MB  6.0 MB/s  ETA 0:00:20"
    assert format_progress("w.pth", 2_000, 4_000, 0, 1.0).startswith("w.pth  2.0 / 4.0 kB")
