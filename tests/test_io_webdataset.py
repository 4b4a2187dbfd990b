"""WebDataset shards (.tar) as input, made with tarfile (and with the
webdataset library's TarWriter where it is installed); outputs checked
against the mixup formula applied to what Pillow decodes of each member."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
from conftest import assert_nothing_written, load_output, read_sidecar
from test_io_images import mixed

Image = pytest.importorskip("PIL.Image")


def encoded(rng, size=(6, 8), fmt="PNG", mode="RGB"):
    w, h = size
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_shards(folder, shards=2, per_shard=5, seed=0, labels=True, sizes=None):
    """Shards shard-0000.tar, ...: samples KEY.(png|jpg) + KEY.cls + KEY.json;
    returns the image bytes and classes in sample order."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images, classes = [], []
    for s in range(shards):
        with tarfile.open(folder / f"shard-{s:04d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"part{s}/{i:04d}"
                ext, fmt = ("jpg", "JPEG") if i % 2 else ("png", "PNG")
                data = encoded(rng, sizes[i % len(sizes)] if sizes else (6, 8), fmt, "L" if i == 3 else "RGB")
                add(tar, f"{key}.{ext}", data)
                if labels:
                    add(tar, f"{key}.cls", f"{(s + i) % 3}\n".encode())
                    add(tar, f"{key}.json", json.dumps({"meta": {"label": i % 2}}).encode())
                images.append(data)
                classes.append((s + i) % 3)
    return images, np.array(classes)


def decoded(blobs, size=None):
    rows = []
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as im:
            im = im.convert("RGB")
            if size is not None and im.size != size:
                from PIL import ImageOps

                im = ImageOps.fit(im, size, method=getattr(Image, "Resampling", Image).BILINEAR)
            rows.append(np.asarray(im, dtype=np.uint8))
    return np.stack(rows)


def test_a_folder_of_shards_is_read_sample_by_sample(tmp_path, run_cli):
    blobs, classes = make_shards(tmp_path / "shards")
    out = tmp_path / "out.h5"
    result = run_cli("augment", tmp_path / "shards", out, "--seed", "2")
    assert result.exit_code == 0, result.output
    data = load_output(out)
    assert data["x"].shape == (10, 8, 6, 3)
    np.testing.assert_array_equal(data["x"], mixed(decoded(blobs), data["lam"], data["partner"]))
    onehot = np.eye(3, dtype=np.float32)[classes]
    lam = data["lam"].astype(np.float32)[:, None]
    np.testing.assert_allclose(data["y"], lam * onehot + (1 - lam) * onehot[data["partner"]], rtol=1e-6)
    record = read_sidecar(out)
    assert record["input"]["format"] == "webdataset"
    shards = sorted((tmp_path / "shards").glob("*.tar"))
    assert [f["path"] for f in record["input"]["files"]] == [str(p.resolve()) for p in shards]
    assert [f["sha256"] for f in record["input"]["files"]] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in shards
    ]
    assert record["parameters"]["images"]["label"] == "cls"
    result = run_cli("verify", out)
    assert result.exit_code == 0, result.output


def test_one_shard_with_a_json_label_and_a_size(tmp_path, run_cli):
    blobs, _ = make_shards(tmp_path / "shards", shards=1, sizes=[(6, 8), (9, 5)])
    out = tmp_path / "out.npz"
    shard = tmp_path / "shards" / "shard-0000.tar"
    result = run_cli("augment", shard, out, "--seed", "3", "--wds-label", "json:meta.label", "--image-size", "4x3")
    assert result.exit_code == 0, result.output
    data = load_output(out)
    np.testing.assert_array_equal(data["x"], mixed(decoded(blobs, (4, 3)), data["lam"], data["partner"]))
    assert data["y"].shape == (5, 2)
    assert run_cli("verify", out).exit_code == 0


def test_shards_without_labels_are_x_alone(tmp_path, run_cli):
    blobs, _ = make_shards(tmp_path / "shards", labels=False)
    out = tmp_path / "out.h5"
    assert run_cli("augment", tmp_path / "shards", out, "--seed", "4").exit_code == 0
    data = load_output(out)
    assert set(data) == {"x", "lam", "partner"}
    np.testing.assert_array_equal(data["x"], mixed(decoded(blobs), data["lam"], data["partner"]))


def test_a_sample_without_an_image_or_a_bad_one_is_named(tmp_path, run_cli, run_mixup, outdir):
    rng = np.random.default_rng(5)
    shard = tmp_path / "in.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(4):
            add(tar, f"{i:03d}.png", encoded(rng))
            add(tar, f"{i:03d}.cls", b"1")
        add(tar, "004.cls", b"0")  # no image
        add(tar, "005.png", encoded(rng)[:50])  # truncated
        add(tar, "005.cls", b"0")
    proc = run_mixup("augment", shard, outdir / "out.h5")
    assert proc.returncode == 1 and "sample '004' has no image" in proc.stderr and "--skip-bad-images" in proc.stderr
    assert_nothing_written(outdir)
    out = tmp_path / "out.h5"
    result = run_cli("augment", shard, out, "--skip-bad-images", "--seed", "1")
    assert result.exit_code == 0, result.output
    assert len(load_output(out)["x"]) == 4
    skipped = [item["path"] for item in read_sidecar(out)["parameters"]["images"]["skipped"]]
    assert skipped == [f"{shard.resolve()}:004", f"{shard.resolve()}:005.png"]


def test_a_truncated_member_stops_the_run_naming_it(tmp_path, run_mixup, outdir):
    rng = np.random.default_rng(6)
    shard = tmp_path / "in.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(3):
            add(tar, f"{i:03d}.png", encoded(rng)[: 60 if i == 1 else None])
    proc = run_mixup("augment", shard, outdir / "out.h5", "--image-size", "4")
    assert proc.returncode == 1 and f"{shard}:001.png: cannot decode" in proc.stderr
    assert_nothing_written(outdir)


def test_labels_on_some_samples_only_are_refused(tmp_path, run_mixup, outdir):
    rng = np.random.default_rng(7)
    shard = tmp_path / "in.tar"
    with tarfile.open(shard, "w") as tar:
        add(tar, "a.png", encoded(rng))
        add(tar, "a.cls", b"0")
        add(tar, "b.png", encoded(rng))
    proc = run_mixup("augment", shard, outdir / "out.h5")
    assert proc.returncode == 1 and f"{shard}:b: a sample without a label" in proc.stderr
    proc = run_mixup("augment", shard, outdir / "out.h5", "--wds-label", "meta")
    assert proc.returncode == 2 and "--wds-label" in proc.stderr
    assert_nothing_written(outdir)


def test_shards_written_by_the_webdataset_library(tmp_path, run_cli):
    wds = pytest.importorskip("webdataset")
    rng = np.random.default_rng(8)
    blobs = []
    with wds.TarWriter(str(tmp_path / "w-000.tar")) as sink:
        for i in range(6):
            blob = encoded(rng, fmt="JPEG")
            blobs.append(blob)
            sink.write({"__key__": f"sample{i:05d}", "jpg": blob, "cls": i % 2})
    out = tmp_path / "out.h5"
    result = run_cli("augment", tmp_path / "w-000.tar", out, "--seed", "9")
    assert result.exit_code == 0, result.output
    data = load_output(out)
    np.testing.assert_array_equal(data["x"], mixed(decoded(blobs), data["lam"], data["partner"]))
    assert data["y"].shape == (6, 2)
