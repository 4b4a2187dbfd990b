"""WebDataset shards (.tar) as input, made with tarfile (and with the
webdataset library's TarWriter where it is installed); outputs checked
against the mixup formula applied to what Pillow decodes of each member."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_nothing_written, read_sidecar
from conftest import load_output as load_arrays
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


def load_output(path):
    """An output's arrays; a .tar (a set of shards writes shards) read with
    tarfile, Pillow and json: the images, and each sample's json fields."""
    path = Path(path)
    if path.suffix != ".tar":
        return load_arrays(path)
    images, records = [], []
    with tarfile.open(path, "r:") as tar:
        for info in tar:
            data = tar.extractfile(info).read()
            if info.name.endswith(".png"):
                with Image.open(io.BytesIO(data)) as im:
                    arr = np.asarray(im)
                images.append(arr.reshape(arr.shape[0], arr.shape[1], -1))
            elif info.name.endswith(".json"):
                records.append(json.loads(data))
    out = {
        "x": np.stack(images),
        "lam": np.array([r["lam"] for r in records], dtype=np.float64),
        "partner": np.array([r["partner"] for r in records], dtype=np.int64),
    }
    if "target" in records[0]:
        out["y"] = np.array([r["target"] for r in records], dtype=np.float32)
    return out


def set_output(outdir, names, keys=("x", "y", "lam", "partner")):
    """A set's outputs (WebDataset shards) concatenated in the set's order."""
    parts = [load_output(outdir / name) for name in names]
    return {key: np.concatenate([part[key] for part in parts]) for key in keys if key in parts[0]}


NAMES = ["shard-0000.tar", "shard-0001.tar", "shard-0002.tar"]


def check_set(outdir, blobs, classes, names=NAMES):
    """The outputs concatenated are the formula over the decoded samples of every shard, partners across shards."""
    data = set_output(outdir, names)
    assert data["x"].shape == (len(blobs), 8, 6, 3)
    np.testing.assert_array_equal(data["x"], mixed(decoded(blobs), data["lam"], data["partner"]))
    onehot = np.eye(3, dtype=np.float32)[classes]
    lam = data["lam"].astype(np.float32)[:, None]
    np.testing.assert_allclose(data["y"], lam * onehot + (1 - lam) * onehot[data["partner"]], rtol=1e-6)
    return data


def test_a_folder_of_shards_is_a_set_of_them(tmp_path, run_cli):
    blobs, classes = make_shards(tmp_path / "shards", shards=3, per_shard=4)
    out = tmp_path / "mixed"
    result = run_cli("augment", tmp_path / "shards", out, "--seed", "2")
    assert result.exit_code == 0, result.output
    data = check_set(out, blobs, classes)
    assert len(set(data["partner"] // 4)) > 1  # partners come from other shards too
    shards = sorted((tmp_path / "shards").glob("*.tar"))
    manifest = json.loads((out / "mixup-set.json").read_text())
    assert [e["name"] for e in manifest["inputs"]] == [p.name for p in shards]
    assert manifest["outputs"] == NAMES
    for shard, name in zip(shards, NAMES):
        record = read_sidecar(out / name)
        assert record["input"]["format"] == "webdataset"
        assert [f["path"] for f in record["input"]["files"]] == [str(shard.resolve())]
        assert record["input"]["files"][0]["sha256"] == hashlib.sha256(shard.read_bytes()).hexdigest()
        assert record["set"]["input"]["name"] == shard.name == name and "output" not in record["set"]
        assert [e["name"] for e in record["set"]["inputs"]] == [p.name for p in shards]
        assert record["parameters"]["images"]["label"] == "cls"
        assert record["parameters"]["images"]["samples"] == 12
    result = run_cli("verify", out)
    assert result.exit_code == 0, result.output
    assert "all 3 outputs present and verified" in result.output


@pytest.mark.slow
def test_a_brace_pattern_names_the_shards_as_webdataset_writes_it(tmp_path, run_cli):
    blobs, classes = make_shards(tmp_path / "shards", shards=3, per_shard=4)
    whole = tmp_path / "whole"
    assert run_cli("augment", tmp_path / "shards", whole, "--seed", "5").exit_code == 0
    out = tmp_path / "braces"
    result = run_cli("augment", str(tmp_path / "shards" / "shard-{0000..0002}.tar"), out, "--seed", "5")
    assert result.exit_code == 0, result.output
    check_set(out, blobs, classes)
    for name in NAMES:  # the same set as the folder: the same bytes
        a, b = load_output(whole / name), load_output(out / name)
        assert all(np.array_equal(a[key], b[key]) for key in a)
    # In a list: a pattern a line, relative to the list's folder; {a,b} alternatives.
    (tmp_path / "list.txt").write_text("shards/shard-{0000,0001}.tar\n# the last one\nshards/shard-0002.tar\n")
    listed = tmp_path / "listed"
    result = run_cli("augment", "--inputs-from", tmp_path / "list.txt", listed, "--seed", "5")
    assert result.exit_code == 0, result.output
    for name in NAMES:
        a, b = load_output(whole / name), load_output(listed / name)
        assert all(np.array_equal(a[key], b[key]) for key in a)


@pytest.mark.slow
def test_shards_of_a_set_run_as_parts(tmp_path, run_cli, run_mixup):
    blobs, classes = make_shards(tmp_path / "shards", shards=3, per_shard=4)
    pattern = str(tmp_path / "shards" / "shard-{0000..0002}.tar")
    out = tmp_path / "parts"
    for i, present in ((1, NAMES[1:]), (0, NAMES)):  # part 1 of 2 writes outputs 1 and 2 of 3
        proc = run_mixup("augment", pattern, out, "--seed", "6", "--shard", f"{i}/2", "-q")
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".json")) == present
    check_set(out, blobs, classes)
    assert run_cli("verify", out).exit_code == 0
    whole = tmp_path / "whole"
    assert run_cli("augment", pattern, whole, "--seed", "6").exit_code == 0
    for name in NAMES:
        a, b = load_output(whole / name), load_output(out / name)
        assert all(np.array_equal(a[key], b[key]) for key in a)


@pytest.mark.slow
def test_a_pattern_naming_missing_shards_is_refused_naming_the_first(tmp_path, run_mixup, outdir):
    make_shards(tmp_path / "shards", shards=3, per_shard=2)
    (tmp_path / "shards" / "shard-0001.tar").unlink()
    pattern = str(tmp_path / "shards" / "shard-{0000..0004}.tar")
    proc = run_mixup("augment", pattern, outdir / "mixed", "--seed", "1")
    assert proc.returncode == 1
    line = f"{pattern}: {tmp_path / 'shards' / 'shard-0001.tar'} does not exist (3 of the 5 paths"
    assert line in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    (outdir / "list.txt").write_text(pattern + "\n")
    proc = run_mixup("augment", "--inputs-from", outdir / "list.txt", outdir / "mixed", "--seed", "1")
    assert proc.returncode == 1 and line in proc.stderr
    (outdir / "list.txt").unlink()
    assert_nothing_written(outdir)


@pytest.mark.slow
def test_shards_that_disagree_are_refused_by_name(tmp_path, run_mixup, outdir):
    make_shards(tmp_path / "a", shards=1, per_shard=2)
    make_shards(tmp_path / "b", shards=1, per_shard=2, labels=False)
    (tmp_path / "b" / "shard-0000.tar").rename(tmp_path / "b" / "other.tar")
    proc = run_mixup("augment", tmp_path / "a" / "shard-0000.tar", tmp_path / "b" / "other.tar", outdir / "m")
    assert proc.returncode == 1
    assert f"{tmp_path / 'b' / 'other.tar'}: has no array 'y'" in proc.stderr
    proc = run_mixup("augment", tmp_path / "a" / "shard-0000.tar", tmp_path / "a" / "shard-0000.tar", outdir / "m")
    assert proc.returncode == 2 and "is given twice" in proc.stderr
    assert_nothing_written(outdir)


def test_a_set_of_shards_decodes_with_the_image_options(tmp_path, run_cli):
    blobs, _ = make_shards(tmp_path / "shards", shards=2, per_shard=3, sizes=[(6, 8), (9, 5)])
    out = tmp_path / "mixed"
    args = ("--seed", "3", "--wds-label", "json:meta.label", "--image-size", "4x3")
    result = run_cli("augment", tmp_path / "shards", out, *args)
    assert result.exit_code == 0, result.output
    data = set_output(out, NAMES[:2])
    np.testing.assert_array_equal(data["x"], mixed(decoded(blobs, (4, 3)), data["lam"], data["partner"]))
    assert data["y"].shape == (6, 2)
    assert read_sidecar(out / NAMES[0])["parameters"]["images"]["size"] == [4, 3]
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
    out = tmp_path / "mixed"
    assert run_cli("augment", tmp_path / "shards", out, "--seed", "4").exit_code == 0
    data = set_output(out, NAMES[:2])
    assert set(data) == {"x", "lam", "partner"}
    assert set(load_output(out / NAMES[0])) == {"x", "lam", "partner"}
    np.testing.assert_array_equal(data["x"], mixed(decoded(blobs), data["lam"], data["partner"]))


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_truncated_member_stops_the_run_naming_it(tmp_path, run_mixup, outdir):
    rng = np.random.default_rng(6)
    shard = tmp_path / "in.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(3):
            add(tar, f"{i:03d}.png", encoded(rng)[: 60 if i == 1 else None])
    proc = run_mixup("augment", shard, outdir / "out.h5", "--image-size", "4")
    assert proc.returncode == 1 and f"{shard}:001.png: cannot decode" in proc.stderr
    assert_nothing_written(outdir)


@pytest.mark.slow
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


def test_a_set_of_shards_written_by_the_webdataset_library(tmp_path, run_cli):
    wds = pytest.importorskip("webdataset")
    rng = np.random.default_rng(10)
    blobs, classes = [], []
    (tmp_path / "wds").mkdir()
    for s in range(3):
        with wds.TarWriter(str(tmp_path / "wds" / f"train-{s:06d}.tar")) as sink:
            for i in range(3 + s):
                blob = encoded(rng, fmt="JPEG")
                blobs.append(blob)
                classes.append((i + s) % 3)
                sink.write({"__key__": f"s{s}-{i:05d}", "jpg": blob, "cls": (i + s) % 3})
    out = tmp_path / "mixed"
    pattern = str(tmp_path / "wds" / "train-{000000..000002}.tar")
    result = run_cli("augment", pattern, out, "--seed", "9", "--pairing", "within-class")
    assert result.exit_code == 0, result.output
    names = [f"train-{s:06d}.tar" for s in range(3)]
    data = check_set(out, blobs, np.array(classes), names)
    assert [len(load_output(out / name)["x"]) for name in names] == [3, 4, 5]
    assert np.array_equal(np.array(classes)[data["partner"]], np.array(classes))
    assert run_cli("verify", out).exit_code == 0
    # The outputs are shards the webdataset library reads: within-class rows are one class, so .cls is there.
    read = list(wds.WebDataset(str(out / "train-{000000..000002}.tar"), shardshuffle=False).decode("rgb8"))
    assert [r["__key__"] for r in read[:3]] == ["000000000", "000000001", "000000002"] and len(read) == 12
    assert [int(r["cls"]) for r in read] == classes
    keys = [f"train-{s:06d}.tar:s{s}-{i:05d}" for s in range(3) for i in range(3 + s)]
    assert [r["json"]["sources"] for r in read] == [[keys[i], keys[p]] for i, p in enumerate(data["partner"])]


@pytest.mark.slow
def test_compressed_shards_are_refused_saying_how_to_decompress(tmp_path, run_mixup, outdir):
    import gzip
    import shutil
    import subprocess

    make_shards(tmp_path / "shards", shards=2, per_shard=2)
    plain = tmp_path / "shards" / "shard-0001.tar"
    packed = tmp_path / "shards" / "shard-0001.tar.gz"
    with open(plain, "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    plain.unlink()
    tgz = tmp_path / "one.tgz"
    shutil.copy(packed, tgz)
    renamed = tmp_path / "renamed.tar"  # gzip inside, whatever the name says
    shutil.copy(packed, renamed)
    cases = [
        ((tgz, outdir / "out.h5"), f"{tgz}: a gzip-compressed tar; WebDataset shards are read uncompressed"),
        ((renamed, outdir / "out.h5"), f"gunzip -c {renamed} > {tmp_path / 'renamed.plain.tar'}"),
        ((tmp_path / "shards", outdir / "mixed"), f"{packed}: a gzip-compressed tar"),
        ((str(tmp_path / "shards" / "shard-{0000.tar,0001.tar.gz}"), outdir / "mixed"), f"{packed}: a gzip"),
    ]
    for args, message in cases:
        proc = run_mixup("augment", *args, "--seed", "1")
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert_nothing_written(outdir)
    # The command it gives works, and the folder then reads the .tar beside the .tar.gz.
    assert f"gunzip -k {packed}, which writes shard-0001.tar" in proc.stderr
    if shutil.which("gunzip"):
        subprocess.run(["gunzip", "-k", str(packed)], check=True)
    else:
        plain.write_bytes(gzip.decompress(packed.read_bytes()))
    proc = run_mixup("augment", tmp_path / "shards", outdir / "mixed", "--seed", "1", "-q")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (outdir / "mixed").iterdir() if p.suffix == ".tar") == NAMES[:2]


@pytest.mark.slow
@pytest.mark.parametrize("form", ["pattern", "folder"])
def test_preview_of_shards_shows_the_rows_the_set_writes(tmp_path, run_cli, form):
    pytest.importorskip("matplotlib")
    from mixup_cli.commands import preview

    make_shards(tmp_path / "shards", shards=3, per_shard=4)
    given = str(tmp_path / "shards" / "shard-{0000..0002}.tar") if form == "pattern" else tmp_path / "shards"
    common = ("--seed", "5", "--block-rows", "4", "--pairing", "within-class")
    picture = tmp_path / "shown.png"
    result = run_cli("preview", given, "-o", picture, "--rows", "3", "--dpi", "25", *common)
    assert result.exit_code == 0, result.output
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run_cli("augment", given, tmp_path / "mixed", *common).exit_code == 0
    written = set_output(tmp_path / "mixed", NAMES)
    shown = preview.preview_rows(given, seed=5, rows=3, block_rows=4, pairing="within-class")
    at = shown.out_rows
    assert len(at) == 3
    assert np.array_equal(written["x"][at], shown.mixed["x"])
    assert np.array_equal(written["lam"][at], shown.lam) and np.array_equal(written["partner"][at], shown.partner)


def test_a_set_of_shards_lists_each_shard_once_however_few_stay_open(tmp_path):
    """Partners by index touch every shard; past the open readers' limit a shard
    reopens without listing its members again (descriptors and threads are let go)."""
    from mixup_cli.sets import ConcatReader, inspect_inputs

    blobs, _ = make_shards(tmp_path / "shards", shards=5, per_shard=3)
    layout = inspect_inputs(sorted((tmp_path / "shards").glob("*.tar")))
    rows = np.array([14, 0, 7, 3, 12, 1, 9, 5, 13, 2, 10, 4, 6, 11, 8])
    reader = ConcatReader(layout, max_open=2)
    try:
        for _ in range(3):
            np.testing.assert_array_equal(reader.take("x", rows), decoded(blobs)[rows])
            assert reader.open_count <= 2
        assert reader.opened == 5
    finally:
        reader.close()


def test_verify_reads_members_through_tarfile_and_catches_a_wrong_offset(tmp_path, run_cli, monkeypatch):
    # The run reads each member at its offset (os.pread); verify reads it by name with tarfile.
    from mixup_cli.io import webdataset

    make_shards(tmp_path / "in", shards=1, per_shard=6)
    shard = tmp_path / "in" / "shard-0000.tar"
    fast_bytes = webdataset.Reader._bytes
    with tarfile.open(shard) as tar:
        first = next(m for m in tar.getmembers() if m.name.endswith(".png"))

    def always_the_first_image(self, k, offset, size, name):
        if name.endswith((".png", ".jpg")):
            return fast_bytes(self, k, first.offset_data, first.size, name)
        return fast_bytes(self, k, offset, size, name)

    monkeypatch.setattr(webdataset.Reader, "_bytes", always_the_first_image)
    assert run_cli("augment", shard, tmp_path / "out.h5", "--seed", "3", "--image-size", "8x6").exit_code == 0
    # The fault is still there: a verify that shared the run's path would reproduce it and pass.
    result = run_cli("verify", tmp_path / "out.h5")
    assert result.exit_code == 1 and "recompute" in result.output
    monkeypatch.undo()
    assert run_cli("augment", shard, tmp_path / "good.h5", "--seed", "3", "--image-size", "8x6").exit_code == 0
    assert run_cli("verify", tmp_path / "good.h5").exit_code == 0
