"""Test helper: an HTTP server on 127.0.0.1 (a thread, a free port) serving files from a dict,
with the failures a real download meets, and the archives of each dataset in its real layout.

``FileServer.files[path] = bytes`` serves ``/path`` (Range requests answered with 206);
``faults[path]`` is a list of what the next requests get, one entry each, then normal
service: ``"drop"`` (half the body, then the connection closes), ``"truncate"`` (a full
Content-Length, a short body), ``404`` / ``500`` (that status), ``"drive"`` (Google Drive's
confirmation page, whose form leads to ``/drive-download?id=<path>&confirm=t``),
``"quota"`` (Drive's quota page). ``requests`` records (path, Range header) of each request.
"""

from __future__ import annotations

import io
import json
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image

from hjax.data import download


class FileServer:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def handle(self, h: BaseHTTPRequestHandler):
        parsed = urlparse(h.path)
        path = parsed.path.lstrip("/")
        if path == "drive-download":
            path = parse_qs(parsed.query)["id"][0]
        rng = h.headers.get("Range")
        self.requests.append((path, rng))
        fault = self.faults.get(path, [None]).pop(0) if self.faults.get(path) else None
        if isinstance(fault, int):
            h.send_error(fault)
            return
        if fault in ("drive", "quota"):
            page = (f'<html><form id="download-form" action="{self.url}/drive-download" '
                    f'method="get"><input type="hidden" name="id" value="{path}">'
                    f'<input type="hidden" name="confirm" value="t"></form></html>'
                    if fault == "drive" else
                    "<html><p>Too many users have viewed or downloaded this file "
                    "recently.</p></html>")
            body = page.encode()
            h.send_response(200)
            h.send_header("Content-Type", "text/html; charset=utf-8")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        if path not in self.files:
            h.send_error(404)
            return
        data = self.files[path]
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if start >= len(data) and rng:
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{len(data)}")
            h.end_headers()
            return
        body = data[start:]
        h.send_response(206 if rng else 200)
        if rng:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if fault in ("drop", "truncate"):
            h.wfile.write(body[:len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(body)


@pytest.fixture
def server(monkeypatch):
    """A FileServer for one test; retries without waiting, no mirror from the environment."""
    s = FileServer()
    monkeypatch.setattr(download, "BACKOFF_S", 0.0)
    monkeypatch.delenv(download.MIRROR_ENV_VAR, raising=False)
    yield s
    s.close()


# ----------------------------------------------------------------------------- archives

def jpeg(seed: int, size=(8, 8)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG")
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def tar_gz_bytes(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            t.addfile(info)
    return buf.getvalue()


def tree_members(top: str, domains, classes, per_class: int = 1, skip=()) -> dict[str, bytes]:
    """``{top}<domain>/<class>/img_<k>.jpg`` for every (domain, class) not in ``skip``."""
    out, seed = {}, 0
    for d in domains:
        for c in classes:
            if (d, c) in skip:
                continue
            for k in range(per_class):
                seed += 1
                out[f"{top}{d}/{c}/img_{k}.jpg"] = jpeg(seed)
    return out


def terra_archives() -> tuple[bytes, bytes, dict[str, dict[str, int]]]:
    """(images tar.gz, annotations tar.gz, expected {location: {class: count}}).

    Two images per kept location (one kept category each), one image with two kept
    categories (in both folders), one of location 99 and one of category deer (left out)."""
    cats = [{"id": i, "name": n} for i, n in enumerate(
        ["bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit", "raccoon",
         "squirrel", "deer"])]
    images, annots, files, expect = [], [], {}, {}
    n = 0

    def add(location, cat_ids):
        nonlocal n
        n += 1
        name = f"{n:04d}aaaa-bbbb.jpg"
        images.append({"id": f"im{n}", "file_name": name, "location": location})
        for c in cat_ids:
            annots.append({"id": f"a{len(annots)}", "image_id": f"im{n}", "category_id": c})
        files[f"eccv_18_all_images_sm/{name}"] = jpeg(100 + n)
        for c in cat_ids:
            cname = cats[c]["name"]
            if str(location) in ("38", "43", "46", "100") and cname != "deer":
                per = expect.setdefault(f"location_{location}", {})
                per[cname] = per.get(cname, 0) + 1

    for i, loc in enumerate((38, 43, 46, 100)):
        add(loc, [i])
        add(str(loc), [5])          # DomainBed compares str(location): ints and strings
    add(38, [0, 2])                 # two kept categories: in both folders
    add(99, [1])                    # another location
    add(43, [10])                   # a category not kept
    split = len(images) // 2
    ann_files = {}
    for k, fname in enumerate(("cis_test", "cis_val", "train", "trans_test", "trans_val")):
        part = images[:split] if fname == "train" else images[split:] if k == 0 else []
        ids = {im["id"] for im in part}
        ann_files[f"eccv_18_annotation_files/{fname}_annotations.json"] = json.dumps(
            {"images": part, "annotations": [a for a in annots if a["image_id"] in ids],
             "categories": cats, "info": {}}).encode()
    return tar_gz_bytes(files), tar_gz_bytes(ann_files), expect


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
