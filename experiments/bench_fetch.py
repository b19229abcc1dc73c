r"""Throughput of `fetch_data`'s stages on a local HTTP server (127.0.0.1): download MB/s, and
extraction and verification MB/s and images/s, for a PACS-layout zip and a TerraIncognita
pair of tarballs (images + annotations) of generated 227 px JPEGs.

    python experiments/bench_fetch.py [--images=2000]

Local-server figures: they measure hjax's own work (HTTP client, unzip / untar, PIL header
checks, the TerraIncognita build), not a real network.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
import threading
import time
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from hjax.data.download import Source, download
from hjax.data.images import fetch as fetch_mod
from hjax.data.images import published_counts
from hjax.data.images.published_counts import Published
from hjax.data.images.registry import IMAGE_DATASETS


def _jpeg(rng) -> bytes:
    base = np.linspace(0, 255, 227, dtype=np.float32)
    pixels = (base[None, :, None] * rng.uniform(0.3, 1, 3) + rng.normal(0, 8, (227, 227, 3)))
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _pacs(folder: Path, n: int, rng) -> tuple[Path, dict]:
    info = IMAGE_DATASETS["pacs"]
    counts, path = {}, folder / "PACS.zip"
    with zipfile.ZipFile(path, "w") as z:
        for i in range(n):
            d, c = info.domains[i % 4], info.classes[(i // 4) % 7]
            z.writestr(f"kfold/{d}/{c}/{i:06d}.jpg", _jpeg(rng))
            counts.setdefault(d, {}).setdefault(c, 0)
            counts[d][c] += 1
    return path, counts


def _terra(folder: Path, n: int, rng) -> tuple[list[Path], dict]:
    classes = IMAGE_DATASETS["terra_incognita"].classes
    cats = [{"id": i, "name": c} for i, c in enumerate(classes)]
    images, annots, counts = [], [], {}
    img_path = folder / "eccv_18_all_images_sm.tar.gz"
    with tarfile.open(img_path, "w:gz", compresslevel=1) as t:
        for i in range(n):
            loc, cat = ("38", "43", "46", "100")[i % 4], i % 10
            name = f"{i:08d}-cct.jpg"
            images.append({"id": f"i{i}", "file_name": name, "location": int(loc)})
            annots.append({"id": f"a{i}", "image_id": f"i{i}", "category_id": cat})
            data = _jpeg(rng)
            info = tarfile.TarInfo(f"eccv_18_all_images_sm/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
            per = counts.setdefault(f"location_{loc}", {})
            per[classes[cat]] = per.get(classes[cat], 0) + 1
    ann_path = folder / "eccv_18_annotations.tar.gz"
    with tarfile.open(ann_path, "w:gz") as t:
        for k, f in enumerate(("cis_test", "cis_val", "train", "trans_test", "trans_val")):
            body = json.dumps({"images": images if f == "train" else [],
                               "annotations": annots if f == "train" else [],
                               "categories": cats}).encode()
            info = tarfile.TarInfo(f"eccv_18_annotation_files/{f}_annotations.json")
            info.size = len(body)
            t.addfile(info, io.BytesIO(body))
    return [img_path, ann_path], counts


def _publish(name: str, counts: dict) -> None:
    total = sum(sum(c.values()) for c in counts.values())
    published_counts.PUBLISHED[name] = Published(
        (total,), {total: {d: sum(c.values()) for d, c in counts.items()}}, counts,
        name != "terra_incognita", "generated")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Log(list):
    def __call__(self, msg, *args):
        self.append(msg % args if args else msg)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        served = tmp / "served"
        served.mkdir()
        pacs, pacs_counts = _pacs(served, args.images, rng)
        terra, terra_counts = _terra(served, args.images, rng)
        handler = partial(_QuietHandler, directory=str(served))
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        rows = []
        for name, files, counts in (("pacs", [pacs], pacs_counts),
                                    ("terra_incognita", terra, terra_counts)):
            _publish(name, counts)
            got = tmp / name / "archives"
            t0 = time.perf_counter()
            for f in files:
                download(Source(f.name, None), got / f.name, url=f"{url}/{f.name}")
            dt = time.perf_counter() - t0
            size = sum(f.stat().st_size for f in files) / 1e6
            log = _Log()
            fetch_mod.log.info = log
            t1 = time.perf_counter()
            given = got if len(files) > 1 else files[0]
            fetch_mod.fetch_dataset(name, tmp / name, from_archive=given)
            total = time.perf_counter() - t1
            rows.append((name, size, dt, total, log))
        httpd.shutdown()
    print(f"{args.images} generated 227 px JPEGs per dataset; local server on 127.0.0.1\n")
    print("| dataset | archives | download | extract + verify + install (from the "
          "archive) | stage lines |")
    print("|---|---|---|---|---|")
    for name, size, dt, total, log in rows:
        stages = "; ".join(line.split(": ", 1)[1] for line in log
                           if "images written" in line or "verified" in line)
        print(f"| {name} | {size:.1f} MB | {size / dt:.0f} MB/s | {total:.2f} s "
              f"({args.images / total:.0f} images/s) | {stages} |")


if __name__ == "__main__":
    main()
