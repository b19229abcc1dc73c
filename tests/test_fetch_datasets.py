"""`fetch_data --dataset=...` against a local server (127.0.0.1 only) serving tiny archives in
each dataset's real layout: success for each dataset, and every failure a user meets, each one
line, nothing left that looks complete, a second run succeeding."""

from __future__ import annotations

import json
import os

import pytest

from hjax.cli import fetch_data
from hjax.data.images import IMAGE_DATASETS, ImageDatasetError, load_image_dataset
from hjax.data.images import published_counts
from hjax.data.images.published_counts import Published
from hjax.data.images.verify import MANIFEST_NAME
from fetch_server import (server, terra_archives, tar_gz_bytes, tree_members,  # noqa: F401
                          write, zip_bytes)

PACS = IMAGE_DATASETS["pacs"]
DUPLICATE = "clipart/animal_migration/clipart_006_000227.jpg"     # on DomainBed's list


def _counts(members: dict[str, bytes], top: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for name in members:
        if name.startswith(top) and name.endswith(".jpg"):
            d, c, _ = name[len(top):].split("/")
            out.setdefault(d, {}).setdefault(c, 0)
            out[d][c] += 1
    return out


def _publish(monkeypatch, name: str, counts: dict, num_classes=None) -> None:
    """The published counts of ``name`` replaced by those of the generated tree."""
    total = sum(sum(c.values()) for c in counts.values())
    monkeypatch.setitem(published_counts.PUBLISHED, name, Published(
        (total,), {total: {d: sum(c.values()) for d, c in counts.items()}}, counts,
        name != "terra_incognita", "the test's tree", num_classes))


def _serve(server, monkeypatch, name: str, **kw) -> dict:
    """Puts ``name``'s archives on the server; returns the expected per-class counts."""
    info = IMAGE_DATASETS[name]
    if name == "pacs":
        members = tree_members("kfold/", info.domains, info.classes, **kw)
        members["__MACOSX/._junk"] = b"x"
        server.files["PACS.zip"] = zip_bytes(members)
        counts = _counts(members, "kfold/")
    elif name == "vlcs":
        members = tree_members("VLCS/", info.domains, info.classes)
        server.files["VLCS.tar.gz"] = tar_gz_bytes(members)
        counts = _counts(members, "VLCS/")
    elif name == "office_home":
        members = tree_members("OfficeHomeDataset_10072016/", info.domains, info.classes)
        members["OfficeHomeDataset_10072016/ImageInfo.csv"] = b"name,url\n"
        server.files["office_home.zip"] = zip_bytes(members)
        counts = _counts(members, "OfficeHomeDataset_10072016/")
    elif name == "domain_net":
        counts = {}
        for d in info.domains:
            members = tree_members("", [d], ["animal_migration", "baseball_bat"])
            counts.update(_counts(members, ""))
            if d == "clipart":
                members[DUPLICATE] = b"a duplicate: left out, never read"
            server.files[f"{d}.zip"] = zip_bytes(members)
    else:
        images, annotations, counts = terra_archives()
        server.files["eccv_18_all_images_sm.tar.gz"] = images
        server.files["eccv_18_annotations.tar.gz"] = annotations
    _publish(monkeypatch, name, counts, 2 if name == "domain_net" else None)
    return counts


def _run(tmp_path, server, *flags) -> int:
    return fetch_data.main([f"--data_dir={tmp_path}", f"--mirror={server.url}", "--retries=1",
                            *flags])


def _one_line_error(capsys, *parts) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def _nothing_complete(tmp_path, folder="PACS"):
    assert not (tmp_path / folder).exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("name", ["pacs", "vlcs", "office_home", "terra_incognita",
                                  "domain_net"])
def test_each_dataset_fetches_into_the_domainbed_layout(name, tmp_path, server, monkeypatch,
                                                        capsys):
    counts = _serve(server, monkeypatch, name)
    assert _run(tmp_path, server, f"--dataset={name}") == 0
    err = capsys.readouterr().err
    assert f"{name} ready in" in err and "MB/s" in err
    info = IMAGE_DATASETS[name]
    root = tmp_path / info.dir
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest["counts"] == counts and manifest["matches_published"]
    assert len(manifest["digest"]) == 64 and manifest["archives"][0]["sha256"]
    if name != "domain_net":        # (the registry wants DomainNet's 345 classes)
        ds = load_image_dataset(name, tmp_path, check_counts=False)
        assert len(ds) == sum(sum(c.values()) for c in counts.values())
    assert not (tmp_path / "downloads").exists() or not any((tmp_path / "downloads").iterdir())
    if name == "domain_net":
        assert not (root / DUPLICATE).exists()
    if name == "terra_incognita":      # the image with two kept categories is in both
        both = sorted(p.name for p in (root / "location_38").rglob("*.jpg"))
        assert len(both) == sum(counts["location_38"].values()) == 4
        assert not (root / "location_99").exists()
    # A second run keeps the verified folder and fetches nothing.
    before = len(server.requests)
    assert _run(tmp_path, server, f"--dataset={name}") == 0
    assert len(server.requests) == before


def test_interrupted_download_resumes_with_a_range_request(tmp_path, server, monkeypatch,
                                                           capsys):
    _serve(server, monkeypatch, "pacs")
    server.faults["PACS.zip"] = ["drop"]
    assert _run(tmp_path, server, "--dataset=pacs") == 0
    ranges = [r for p, r in server.requests if p == "PACS.zip"]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
    err = capsys.readouterr().err
    assert "try 2 of 2" in err and "pacs ready" in err


@pytest.mark.parametrize("fault,words", [(404, "HTTP 404"), (500, "HTTP 500"),
                                         ("truncate", "cut short")])
def test_a_failed_download_is_one_line_and_a_second_run_succeeds(fault, words, tmp_path,
                                                                 server, monkeypatch, capsys):
    _serve(server, monkeypatch, "pacs")
    server.faults["PACS.zip"] = [fault] * (1 if fault == 404 else 2)   # 404: not retried
    assert _run(tmp_path, server, "--dataset=pacs") == 1
    _one_line_error(capsys, words, f"{server.url}/PACS.zip", "--from_archive=PATH",
                    "--dataset=pacs")
    _nothing_complete(tmp_path)
    first = len(server.requests)
    assert _run(tmp_path, server, "--dataset=pacs") == 0
    assert (tmp_path / "PACS" / MANIFEST_NAME).is_file()
    if fault == "truncate":             # the second run resumes the first run's .part file
        assert server.requests[first][1].startswith("bytes=")


@pytest.mark.parametrize("member,data,words", [
    ("kfold/photo/dog/../../../../evil.jpg", b"x", ["refusing member", "evil.jpg", "'..'"]),
    ("kfold/sketch/horse/img_0.jpg", b"not a jpeg", ["1 unreadable image(s)",
                                                    "sketch/horse/img_0.jpg"])],
    ids=["zip_slip", "corrupt_image"])
def test_a_bad_member_refuses_the_archive_in_one_line(member, data, words, tmp_path, server,
                                                     monkeypatch, capsys):
    _serve(server, monkeypatch, "pacs")
    members = tree_members("kfold/", PACS.domains, PACS.classes)
    members[member] = data
    server.files["PACS.zip"] = zip_bytes(members)
    assert _run(tmp_path, server, "--dataset=pacs") == 1
    _one_line_error(capsys, *words)
    _nothing_complete(tmp_path)
    assert not list(tmp_path.parent.rglob("evil.jpg"))


def test_tree_with_a_missing_class_names_it(tmp_path, server, monkeypatch, capsys):
    counts = _serve(server, monkeypatch, "pacs")
    members = tree_members("kfold/", PACS.domains, PACS.classes, skip={("photo", "dog")})
    server.files["PACS.zip"] = zip_bytes(members)
    _publish(monkeypatch, "pacs", counts)
    assert _run(tmp_path, server, "--dataset=pacs") == 1
    _one_line_error(capsys, "differs from the published", "photo has no dog images",
                    "photo/dog 0, published 1")
    _nothing_complete(tmp_path)


def test_damaged_archive_is_deleted_so_the_next_run_downloads_it_again(tmp_path, server,
                                                                     monkeypatch, capsys):
    _serve(server, monkeypatch, "vlcs")
    good = server.files["VLCS.tar.gz"]
    server.files["VLCS.tar.gz"] = good[:len(good) // 2]      # a short file, served whole
    assert _run(tmp_path, server, "--dataset=vlcs") == 1
    _one_line_error(capsys, "VLCS.tar.gz is damaged", "--from_archive=PATH")
    _nothing_complete(tmp_path, "VLCS")
    assert not (tmp_path / "downloads" / "VLCS.tar.gz").exists()
    server.files["VLCS.tar.gz"] = good
    assert _run(tmp_path, server, "--dataset=vlcs") == 0


def test_symlink_out_of_the_target_is_refused(tmp_path, server, monkeypatch, capsys):
    _serve(server, monkeypatch, "vlcs")
    info = IMAGE_DATASETS["vlcs"]
    members = tree_members("VLCS/", info.domains, info.classes)
    server.files["VLCS.tar.gz"] = tar_gz_bytes(members, {"VLCS/SUN09/dog/x.jpg": "/etc/passwd"})
    assert _run(tmp_path, server, "--dataset=vlcs") == 1
    _one_line_error(capsys, "refusing member", "a link to '/etc/passwd'")
    _nothing_complete(tmp_path, "VLCS")


def test_from_archive_needs_no_network(tmp_path, server, monkeypatch, capsys):
    _serve(server, monkeypatch, "pacs")
    archive = write(tmp_path / "lab" / "PACS.zip", server.files.pop("PACS.zip"))
    data = tmp_path / "data"
    assert fetch_data.main([f"--data_dir={data}", "--dataset=pacs",
                            f"--from_archive={archive}"]) == 0
    assert (data / "PACS" / MANIFEST_NAME).is_file() and archive.is_file()
    assert server.requests == []


def test_existing_domainbed_folder_is_kept_as_it_is(tmp_path, server, monkeypatch, capsys):
    (tmp_path / "PACS" / "photo").mkdir(parents=True)
    assert _run(tmp_path, server, "--dataset=pacs") == 0
    assert "not fetched by hjax" in capsys.readouterr().err
    assert os.listdir(tmp_path / "PACS") == ["photo"] and server.requests == []


def test_nostrict_counts_installs_a_differing_tree_and_the_manifest_says_so(
        tmp_path, server, monkeypatch, capsys):
    counts = _serve(server, monkeypatch, "pacs")
    server.files["PACS.zip"] = zip_bytes(tree_members("kfold/", PACS.domains, PACS.classes,
                                                      skip={("photo", "dog")}))
    _publish(monkeypatch, "pacs", counts)
    assert _run(tmp_path, server, "--dataset=pacs", "--nostrict_counts") == 0
    manifest = json.loads((tmp_path / "PACS" / MANIFEST_NAME).read_text())
    assert not manifest["matches_published"]
    assert "photo/dog 0, published 1" in manifest["differences"]


def test_force_replaces_a_folder_only_once_the_new_tree_is_verified(tmp_path, server,
                                                                    monkeypatch, capsys):
    _serve(server, monkeypatch, "pacs")
    (tmp_path / "PACS" / "photo").mkdir(parents=True)
    server.faults["PACS.zip"] = [404]
    assert _run(tmp_path, server, "--dataset=pacs", "--force") == 1
    assert os.listdir(tmp_path / "PACS") == ["photo"]                 # kept on failure
    assert _run(tmp_path, server, "--dataset=pacs", "--force") == 0
    assert (tmp_path / "PACS" / MANIFEST_NAME).is_file()
    assert not [p for p in tmp_path.iterdir() if ".old-" in p.name]


def test_bad_dataset_name_is_a_usage_error(tmp_path, server, capsys):
    assert _run(tmp_path, server, "--dataset=pacs,mnist") == 2
    _one_line_error(capsys, "--dataset='mnist'", "pacs", "all")


def test_missing_data_dir_and_missing_dataset_name_hjax_fetch_first(tmp_path):
    with pytest.raises(ImageDatasetError) as e:
        load_image_dataset("pacs", tmp_path / "nonexistent")
    assert "--data_dir=" in str(e.value) and "nonexistent: no such folder" in str(e.value)
    assert not (tmp_path / "nonexistent").exists()
    with pytest.raises(ImageDatasetError) as e:
        load_image_dataset("pacs", tmp_path)
    msg = str(e.value)
    assert msg.index("hjax.cli.fetch_data --dataset=pacs") < msg.index("domainbed.scripts")
