"""WebDataset output (``mixup augment IN OUT.tar``): the tar read back with
``tarfile`` and Pillow (each image exactly the mixup formula applied, in
the test, to the input), with the ``webdataset`` library, and by ``verify``,
``inspect`` and ``--resume``; refusals leave nothing beside OUT."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from conftest import assert_nothing_written, cli_runner, read_sidecar, write_h5
from test_io_images import mixed
from test_io_webdataset import make_shards

from mixup_cli.cli import cli

Image = pytest.importorskip("PIL.Image")


def make_pngs(root, classes=("cat", "dog", "emu"), per_class=4, size=(6, 5), seed=0):
    """IN/<class>/NNN.png (RGB); returns the relative names and rows in the reader's order, and the classes."""
    rng = np.random.default_rng(seed)
    names, rows, labels = [], [], []
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr, "RGB").save(root / c / f"{i:03d}.png")
            names.append(f"{c}/{i:03d}.png")
            rows.append(arr)
            labels.append(k)
    return names, np.stack(rows), np.array(labels)


def samples(path) -> tuple[list[tuple[str, dict]], dict]:
    """(key, {extension: bytes}) of each sample in order, and the PAX global header's ``mixup`` record."""
    found: list[tuple[str, dict]] = []
    with tarfile.open(path, "r:") as tar:
        for info in tar:
            key, ext = info.name.split(".", 1)
            if not found or found[-1][0] != key:
                found.append((key, {}))
            found[-1][1][ext] = tar.extractfile(info).read()
        meta = json.loads(tar.pax_headers["mixup"])
    return found, meta


def png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return np.asarray(im)


def run(*args):
    result = cli_runner().invoke(cli, ["augment", *map(str, args), "--quiet"])
    return result


def test_an_image_folder_becomes_samples_of_png_and_json(tmp_path):
    names, x, labels = make_pngs(tmp_path / "train")
    out = tmp_path / "out.tar"
    result = run(tmp_path / "train", out, "--seed", "3", "--copies", "2")
    assert result.exit_code == 0, result.output
    found, meta = samples(out)
    n = len(names)
    assert [key for key, _ in found] == [f"{i:09d}" for i in range(2 * n)]
    assert all(sorted(members) == ["json", "png"] for _, members in found)  # mixed targets: no .cls
    records = [json.loads(m["json"]) for _, m in found]
    lam = np.array([r["lam"] for r in records])
    partner = np.array([r["partner"] for r in records])
    own = np.arange(2 * n) % n
    images = np.stack([png(m["png"]) for _, m in found])
    np.testing.assert_array_equal(images, mixed(x[own], lam, partner))
    onehot = np.eye(3, dtype=np.float32)[labels]
    lam32 = lam.astype(np.float32)[:, None]
    target = np.array([r["target"] for r in records], dtype=np.float32)
    np.testing.assert_array_equal(target, lam32 * onehot[own] + (1 - lam32) * onehot[partner])
    assert [r["sources"] for r in records] == [[names[o], names[p]] for o, p in zip(own, partner)]
    assert meta["class_names"] == ["cat", "dog", "emu"]
    assert meta["image"] == {"array": "x", "format": "png", "extension": "png"}
    record = read_sidecar(out)
    assert record["output"]["format"] == "webdataset"
    assert record["parameters"]["copies"] == 2


def test_the_webdataset_library_reads_the_output(tmp_path):
    wds = pytest.importorskip("webdataset")
    names, x, labels = make_pngs(tmp_path / "train")
    out = tmp_path / "out.tar"
    assert run(tmp_path / "train", out, "--seed", "5").exit_code == 0
    got = list(wds.WebDataset(str(out), shardshuffle=False).decode("rgb8"))
    assert [s["__key__"] for s in got] == [f"{i:09d}" for i in range(len(names))]
    lam = np.array([s["json"]["lam"] for s in got])
    partner = np.array([s["json"]["partner"] for s in got])
    np.testing.assert_array_equal(np.stack([s["png"] for s in got]), mixed(x, lam, partner))
    assert [s["json"]["sources"][0] for s in got] == names


def test_webdataset_input_names_its_samples_by_key(tmp_path):
    blobs, classes = make_shards(tmp_path / "shards")
    out = tmp_path / "out.tar"
    # A folder of shards is a set, written as a folder of outputs: a .tar name for it is refused.
    refused = run(tmp_path / "shards", out, "--seed", "2")
    assert refused.exit_code == 2 and "name a folder for them" in refused.stderr and not out.exists()
    single = tmp_path / "single.tar"
    assert run(tmp_path / "shards" / "shard-0001.tar", single, "--seed", "2").exit_code == 0
    first = json.loads(samples(single)[0][0][1]["json"])
    assert first["sources"][0] == "part1/0000"  # one shard: its keys as they are


def uint8_h5(path, n=20, row_shape=(6, 8, 3), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *row_shape), dtype=np.uint8)
    y = rng.integers(0, classes, n)
    return write_h5(path, x=x, y=y), x, y


def test_cutmix_boxes_are_in_the_json_and_the_images_pasted(tmp_path):
    src, x, _ = uint8_h5(tmp_path / "in.h5")
    out = tmp_path / "out.tar"
    assert run(src, out, "--seed", "4", "--method", "cutmix", "--alpha", "1").exit_code == 0
    found, _ = samples(out)
    for i, (_, members) in enumerate(found):
        record = json.loads(members["json"])
        y0, x0, y1, x1 = record["box"]
        want = x[i].copy()
        want[y0:y1, x0:x1] = x[record["partner"]][y0:y1, x0:x1]
        np.testing.assert_array_equal(png(members["png"]), want)
        assert record["sources"] == [i, record["partner"]]  # array input: row numbers
        assert record["lam"] == pytest.approx(1 - (y1 - y0) * (x1 - x0) / (6 * 8))
    assert any(json.loads(m["json"])["box"][2] > json.loads(m["json"])["box"][0] for _, m in found)


@pytest.mark.parametrize("row_shape", [(5, 7), (5, 7, 1), (5, 7, 4)])
def test_gray_and_rgba_images_round_trip(tmp_path, row_shape):
    src, x, _ = uint8_h5(tmp_path / "in.h5", row_shape=row_shape)
    out = tmp_path / "out.tar"
    assert run(src, out, "--seed", "1", "--include-original").exit_code == 0
    found, meta = samples(out)
    assert meta["arrays"]["x"]["shape"] == [40, *row_shape]
    originals = np.stack([png(m["png"]) for _, m in found[:20]])
    np.testing.assert_array_equal(originals.reshape(x.shape), x)


def test_within_class_pairs_carry_a_cls_member(tmp_path):
    src, x, y = uint8_h5(tmp_path / "in.h5")
    out = tmp_path / "out.tar"
    assert run(src, out, "--seed", "2", "--pairing", "within-class").exit_code == 0
    found, meta = samples(out)
    assert meta["cls"] is True
    assert [int(m["cls"]) for _, m in found] == y.tolist()
    assert all(sorted(m) == ["cls", "json", "png"] for _, m in found)


@pytest.mark.slow
def test_verify_and_inspect_read_the_tar(tmp_path, run_mixup):
    names, _, _ = make_pngs(tmp_path / "train")
    out = tmp_path / "out.tar"
    assert run(tmp_path / "train", out, "--seed", "3", "--method", "cutmix").exit_code == 0
    done = run_mixup("verify", out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "recompute: all 12 rows of 5 arrays match" in done.stdout
    shown = run_mixup("inspect", out, "--json")
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["format"] == "webdataset"
    assert info["arrays"]["x"]["shape"] == [12, 5, 6, 3] and info["arrays"]["box"]["shape"] == [12, 4]
    # A changed lam in one sample's json is found.
    tampered = tmp_path / "tampered.tar"
    with (
        tarfile.open(out, "r:") as src,
        tarfile.open(tampered, "w", format=tarfile.PAX_FORMAT, pax_headers=src.pax_headers) as dst,
    ):
        for info in src:
            data = src.extractfile(info).read()
            if info.name == "000000004.json":
                record = json.loads(data)
                record["lam"] = 0.5
                data = json.dumps(record).encode()
                info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    out.unlink()
    tampered.rename(out)
    bad = run_mixup("verify", out)
    assert bad.returncode == 1
    assert "'lam' first at row 4 (1 of 12 rows differ)" in bad.stdout


@pytest.mark.slow
def test_jpeg_images_are_verified_as_jpeg_keeps_them(tmp_path, run_mixup):
    names, x, _ = make_pngs(tmp_path / "train", size=(16, 16))
    out = tmp_path / "out.tar"
    assert run(tmp_path / "train", out, "--seed", "3", "--image-format", "jpeg", "--jpeg-quality", "85").exit_code == 0
    found, meta = samples(out)
    assert all(sorted(m) == ["jpg", "json"] for _, m in found)
    assert meta["image"] == {"array": "x", "format": "jpeg", "extension": "jpg", "quality": 85}
    records = [json.loads(m["json"]) for _, m in found]
    want = mixed(x, np.array([r["lam"] for r in records]), np.array([r["partner"] for r in records]))
    got = np.stack([np.asarray(Image.open(io.BytesIO(m["jpg"]))) for _, m in found])

    def as_jpeg(row):  # what Pillow's JPEG keeps of the mixed image (lossy)
        buf = io.BytesIO()
        Image.fromarray(row, "RGB").save(buf, "JPEG", quality=85)
        return np.asarray(Image.open(buf))

    np.testing.assert_array_equal(got, np.stack([as_jpeg(row) for row in want]))
    assert "JPEG (quality 85)" in read_sidecar(out)["output"]["arrays"]["x"]["stored"]
    done = run_mixup("verify", out)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    "row_shape,dtype,args,option",
    [
        ((6, 8, 3), np.float32, [], "choose an array output"),
        ((6, 8, 2), np.uint8, [], "choose an array output"),
        ((6, 8, 4), np.uint8, ["--image-format", "jpeg"], "--image-format png"),
        ((6, 8, 3), np.uint8, ["--jpeg-quality", "80"], "--jpeg-quality applies to --image-format jpeg"),
        ((6, 8, 3), np.uint8, ["--image-format", "jpeg", "--jpeg-quality", "0"], "--jpeg-quality must be 1 to 95"),
        ((6, 8, 3), np.uint8, ["--compression", "gzip"], "--compression gzip is not available for webdataset"),
    ],
)
def test_refusals_are_one_line_and_leave_nothing(tmp_path, outdir, row_shape, dtype, args, option):
    rng = np.random.default_rng(0)
    x = (rng.random((10, *row_shape)) * 255).astype(dtype)
    src = write_h5(tmp_path / "in.h5", x=x, y=rng.integers(0, 3, 10))
    result = run(src, outdir / "out.tar", "--seed", "1", *args)
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], result.stderr
    assert_nothing_written(outdir)


def test_image_format_is_refused_for_array_outputs(tmp_path, outdir):
    src, _, _ = uint8_h5(tmp_path / "in.h5")
    result = run(src, outdir / "out.h5", "--image-format", "jpeg")
    assert result.exit_code == 2
    assert "--image-format applies to WebDataset output (.tar), not hdf5" in result.stderr
    assert_nothing_written(outdir)


def test_mixup_dataset_refuses_a_tar_in_one_line(tmp_path):
    from mixup_cli import InputError, MixupDataset

    src, _, _ = uint8_h5(tmp_path / "in.h5")
    out = tmp_path / "out.tar"
    assert run(src, out, "--seed", "1").exit_code == 0
    with pytest.raises(InputError, match="read for training with the webdataset library"):
        MixupDataset(out)


@pytest.mark.slow  # the staged rows resumed: test_a_stop_while_packing_keeps_the_staged_rows_for_resume
def test_killed_mid_run_resumes_to_the_same_archive(tmp_path):
    from test_resume import ARGS, killed, mixup, partials

    src, _, _ = uint8_h5(tmp_path / "in.h5", n=1000, row_shape=(4, 4, 3))
    ref = tmp_path / "ref" / "out.tar"
    ref.parent.mkdir()
    assert run(src, ref, *ARGS).exit_code == 0
    out = tmp_path / "out.tar"
    killed("write", 21, src, out, *ARGS)  # half-way through x of the 6th task
    assert partials(tmp_path)
    result = mixup("augment", src, out, *ARGS, "--resume", "--quiet")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert read_sidecar(out)["execution"]["resumed_tasks"] >= 1
    assert partials(tmp_path) == []
    (got, got_meta), (want, want_meta) = samples(out), samples(ref)
    assert got == want  # every member's bytes
    assert got_meta.pop("run_id") != want_meta.pop("run_id") and got_meta == want_meta
    # Past the header (which names the run), the archives are the same bytes: fixed member times and owners.
    assert out.read_bytes()[-500_000:] == ref.read_bytes()[-500_000:]


def test_a_set_refuses_image_options_in_one_line(tmp_path, outdir):
    a, _, _ = uint8_h5(tmp_path / "a.h5")
    b, _, _ = uint8_h5(tmp_path / "b.h5", seed=1)
    result = run(a, b, outdir, "--seed", "1", "--image-format", "jpeg")
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--image-format applies to the WebDataset output of one input" in lines[0]
    assert "a set's .tar outputs hold PNG images" in lines[0]
    assert_nothing_written(outdir)


@pytest.mark.parametrize(
    "args,fields",
    [
        (["--y-format", "pair"], ["lam", "partner", "sources", "y_a", "y_b"]),
        (["--no-y"], ["lam", "partner", "sources"]),
        (["--balance"], ["lam", "partner", "sources", "target", "own"]),
    ],
)
def test_the_json_holds_every_array_of_the_row(tmp_path, args, fields):
    src, x, y = uint8_h5(tmp_path / "in.h5", n=30)
    out = tmp_path / "out.tar"
    assert run(src, out, "--seed", "6", *args).exit_code == 0
    found, meta = samples(out)
    records = [json.loads(m["json"]) for _, m in found]
    assert all(list(r) == fields for r in records)
    own = np.array([r.get("own", i) for i, r in enumerate(records)])
    partner = np.array([r["partner"] for r in records])
    assert [r["sources"] for r in records] == [[int(o), int(p)] for o, p in zip(own, partner)]
    lam = np.array([r["lam"] for r in records])
    lam32 = lam.astype(np.float32)[:, None, None, None]
    want = np.clip(np.rint(lam32 * x[own] + (np.float32(1) - lam32) * x[partner]), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(np.stack([png(m["png"]) for _, m in found]), want)
    if "y_a" in fields:
        assert [r["y_a"] for r in records] == y[own].tolist() and [r["y_b"] for r in records] == y[partner].tolist()


@pytest.mark.slow
def test_a_stop_while_packing_keeps_the_staged_rows_for_resume(tmp_path):
    import signal
    import time

    from test_atomic_commit import start
    from test_resume import mixup, partials

    src, _, _ = uint8_h5(tmp_path / "in.h5", n=3000, row_shape=(4, 4, 3))
    ref = tmp_path / "ref" / "out.tar"
    ref.parent.mkdir()
    assert run(src, ref, "--seed", "8").exit_code == 0
    out, flag = tmp_path / "out.tar", tmp_path / "paused.flag"
    proc = start("augment", src, out, "--seed", "8", MIXUP_TEST_PAUSE=f"packing@2:{flag}")  # 1,024 samples in
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "--resume" in stderr, stderr
    assert not out.exists() and ".out.tar.mixup-partial.staging" in partials(tmp_path)
    result = mixup("augment", src, out, "--seed", "8", "--resume", "--quiet")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert partials(tmp_path) == []
    assert samples(out)[0] == samples(ref)[0]


@pytest.mark.slow
def test_a_truncated_tar_fails_verify_without_a_traceback(tmp_path, run_mixup):
    src, _, _ = uint8_h5(tmp_path / "in.h5", n=50)
    out = tmp_path / "out.tar"
    assert run(src, out, "--seed", "1").exit_code == 0
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    done = run_mixup("verify", out)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "not a complete WebDataset output of mixup" in done.stdout + done.stderr


def test_links_planted_at_the_partial_names_are_never_written_through(tmp_path):
    src, x, _ = uint8_h5(tmp_path / "in.h5")
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    victim = outside / "victim"
    victim.write_bytes(b"keep me")
    work = tmp_path / "work"
    work.mkdir()
    (work / ".out.tar.mixup-partial").symlink_to(victim)
    (work / ".out.tar.mixup-partial.staging").symlink_to(outside / "dir", target_is_directory=True)
    out = work / "out.tar"
    assert run(src, out, "--seed", "3").exit_code == 0
    assert victim.read_bytes() == b"keep me" and list((outside / "dir").iterdir()) == []
    assert out.is_file() and not out.is_symlink()
    assert sorted(p.name for p in work.iterdir()) == ["out.tar", "out.tar.provenance.json"]
    found, _ = samples(out)
    records = [json.loads(m["json"]) for _, m in found]
    lam, partner = np.array([r["lam"] for r in records]), np.array([r["partner"] for r in records])
    np.testing.assert_array_equal(np.stack([png(m["png"]) for _, m in found]), mixed(x, lam, partner))


def test_the_tar_command_lists_and_extracts_it(tmp_path):
    import shutil
    import subprocess

    if shutil.which("tar") is None:
        pytest.skip("no tar command")
    src, x, _ = uint8_h5(tmp_path / "in.h5", n=12)
    out = tmp_path / "out.tar"
    assert run(src, out, "--seed", "2").exit_code == 0
    listed = subprocess.run(["tar", "-tvf", str(out)], capture_output=True, text=True, check=True)
    assert listed.stderr == ""
    lines = listed.stdout.splitlines()
    assert [line.split()[-1] for line in lines] == [f"{i:09d}.{e}" for i in range(12) for e in ("png", "json")]
    assert all(line.startswith("-rw-r--r-- 0/0") for line in lines)
    (tmp_path / "x").mkdir()
    subprocess.run(["tar", "-xf", str(out), "-C", str(tmp_path / "x")], check=True, capture_output=True)
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == sorted(line.split()[-1] for line in lines)
    assert json.loads((tmp_path / "x" / "000000003.json").read_text())["sources"][0] == 3


@pytest.mark.slow
@pytest.mark.parametrize("image_format", ["png", "jpeg"])
def test_killed_once_packed_resumes(tmp_path, image_format):
    """Killed between the packing and the commit: PNG's packed samples are
    checked against the journal and kept; JPEG's cannot be, so the run
    starts over, saying why."""
    import signal

    from test_atomic_commit import paused_run
    from test_resume import mixup, partials

    src, _, _ = uint8_h5(tmp_path / "in.h5", n=300, row_shape=(4, 4, 3))
    args = ["--seed", "9", "--block-rows", "100", "--image-format", image_format]
    ref = tmp_path / "ref" / "out.tar"
    ref.parent.mkdir()
    assert run(src, ref, *args).exit_code == 0
    out = tmp_path / "out.tar"
    rc, _ = paused_run(["augment", src, out, *args, "-q"], "staged", signal.SIGKILL, tmp_path)
    assert rc == -signal.SIGKILL and not out.exists()
    result = mixup("augment", src, out, *args, "--resume")
    assert result.returncode == 0, result.stderr
    warned = "packed with JPEG images, which cannot be checked against the journal" in result.stderr
    assert warned == (image_format == "jpeg"), result.stderr
    assert partials(tmp_path) == []
    assert samples(out)[0] == samples(ref)[0]


@pytest.mark.slow
def test_the_sidecar_records_the_image_codecs_that_made_the_bytes(tmp_path, run_mixup):
    """JPEG and PNG bytes depend on libjpeg and zlib: a tar output's sidecar names
    Pillow's and theirs; a run that touches no image records no Pillow."""
    from PIL import __version__ as pillow_version
    from PIL import features

    make_pngs(tmp_path / "train", size=(8, 8))
    out = tmp_path / "out.tar"
    done = run_mixup("augment", tmp_path / "train", out, "--seed", "3", "--image-format", "jpeg", "--quiet")
    assert done.returncode == 0, done.stderr
    software = read_sidecar(out)["software"]
    assert software["pillow"] == pillow_version
    assert software["libjpeg"] == features.version("jpg")
    assert software["zlib"] == features.version("zlib")

    rows = tmp_path / "rows.h5"
    write_h5(rows, x=np.zeros((8, 3), np.float32), y=np.arange(8) % 2)
    done = run_mixup("augment", rows, tmp_path / "rows-out.h5", "--seed", "3", "--quiet")
    assert done.returncode == 0, done.stderr
    assert not {"pillow", "libjpeg", "pyarrow"} & set(read_sidecar(tmp_path / "rows-out.h5")["software"])
