"""A folder of images as input: class folders (ImageFolder) or images alone.

Images are written with Pillow into temporary folders; outputs are checked
against the mixup formula applied to what Pillow itself decodes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import REPO, assert_nothing_written, load_output, read_sidecar, write_h5

Image = pytest.importorskip("PIL.Image")
ImageOps = pytest.importorskip("PIL.ImageOps")
features = pytest.importorskip("PIL.features")

FORMATS = [("png", "PNG"), ("bmp", "BMP"), ("jpg", "JPEG")] + ([("webp", "WEBP")] if features.check("webp") else [])


def picture(rng, size, mode):
    w, h = size
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
    if mode == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    if mode == "P":
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").quantize(16)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def make_folder(root, classes=("cat", "dog", "emu"), per_class=4, size=(20, 12), sizes=None, seed=0):
    """IN/<class>/<name>.<ext>: every format and mode among the files; the
    files of each class in the order the reader must list them."""
    rng = np.random.default_rng(seed)
    modes = ["RGB", "L", "RGBA", "P"]
    listed = []
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            ext, fmt = FORMATS[i % len(FORMATS)]
            mode = modes[i % len(modes)]
            if fmt in ("JPEG",) and mode in ("RGBA", "P"):
                mode = "RGB"
            if fmt == "BMP" and mode == "RGBA":
                mode = "RGB"
            name = f"{'B' if i == 0 else 'a'}{i}.{ext}"  # code point order: 'B' before 'a'
            img = picture(rng, sizes[i % len(sizes)] if sizes else size, mode)
            img.save(root / c / name, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
            listed.append((root / c / name, classes.index(c)))
    order = sorted(listed, key=lambda item: (classes[item[1]], (item[0].name)))
    return [p for p, _ in order], np.array([k for _, k in order])


def pillow_rows(files, size=None, resize="crop", channels="rgb"):
    """What Pillow decodes, converted and resized as documented."""
    rows = []
    for f in files:
        with Image.open(f) as im:
            im = im.convert("RGB" if channels == "rgb" else "L")
            if size is not None and im.size != size:
                if resize == "crop":
                    im = ImageOps.fit(im, size, method=getattr(Image, "Resampling", Image).BILINEAR)
                else:
                    im = im.resize(size, getattr(Image, "Resampling", Image).BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
        rows.append(arr.reshape(arr.shape[0], arr.shape[1], -1))
    return np.stack(rows)


def mixed(x, lam, partner):
    """The mixup formula for uint8 rows: in float32, rounded, clipped."""
    lam32 = lam.astype(np.float32).reshape(-1, *([1] * (x.ndim - 1)))
    out = lam32 * x.astype(np.float32) + (np.float32(1) - lam32) * x[partner].astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def test_an_image_folder_is_mixed_as_pillow_decodes_it(tmp_path, run_cli):
    files, labels = make_folder(tmp_path / "train")
    out = tmp_path / "out.h5"
    result = run_cli("augment", tmp_path / "train", out, "--seed", "3")
    assert result.exit_code == 0, result.output
    data = load_output(out)
    x = pillow_rows(files)
    assert data["x"].dtype == np.uint8 and data["x"].shape == (len(files), 12, 20, 3)
    np.testing.assert_array_equal(data["x"], mixed(x, data["lam"], data["partner"]))
    onehot = np.eye(3, dtype=np.float32)[labels]
    lam = data["lam"].astype(np.float32)[:, None]
    np.testing.assert_allclose(data["y"], lam * onehot + (1 - lam) * onehot[data["partner"]], rtol=1e-6)
    with h5py.File(out) as f:
        assert json.loads(f.attrs["class_names"]) == ["cat", "dog", "emu"]
    record = read_sidecar(out)
    assert record["parameters"]["class_names"] == ["cat", "dog", "emu"]
    assert record["input"]["format"] == "images"
    listed = record["input"]["files"]
    assert [item["path"] for item in listed] == [str(f.resolve()) for f in files]
    assert [item["sha256"] for item in listed] == [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    images = record["parameters"]["images"]
    assert images["size"] is None and images["channels"] == "rgb" and images["decoder"]["pillow"]


@pytest.mark.parametrize("resize", ["crop", "squash"])
def test_image_size_resizes_as_pillow_does(tmp_path, run_cli, resize):
    files, _ = make_folder(tmp_path / "train", sizes=[(20, 12), (9, 17), (16, 16)])
    out = tmp_path / "out.npz"
    result = run_cli(
        "augment", tmp_path / "train", out, "--seed", "1", "--image-size", "10x6", "--image-resize", resize
    )
    assert result.exit_code == 0, result.output
    data = load_output(out)
    assert data["x"].shape == (len(files), 6, 10, 3)
    x = pillow_rows(files, size=(10, 6), resize=resize)
    np.testing.assert_array_equal(data["x"], mixed(x, data["lam"], data["partner"]))
    assert read_sidecar(out)["parameters"]["images"]["size"] == [10, 6]


def test_gray_channels_and_a_square_size(tmp_path, run_cli):
    files, _ = make_folder(tmp_path / "train", sizes=[(20, 12), (9, 17)])
    out = tmp_path / "out.h5"
    result = run_cli("augment", tmp_path / "train", out, "--seed", "2", "--image-size", "8", "--image-channels", "gray")
    assert result.exit_code == 0, result.output
    data = load_output(out)
    assert data["x"].shape == (len(files), 8, 8, 1)
    np.testing.assert_array_equal(
        data["x"], mixed(pillow_rows(files, (8, 8), channels="gray"), data["lam"], data["partner"])
    )


@pytest.mark.slow
def test_different_sizes_without_image_size_are_refused_in_one_line(tmp_path, run_mixup, outdir):
    files, _ = make_folder(tmp_path / "train", sizes=[(20, 12), (20, 12), (9, 17)])
    proc = run_mixup("augment", tmp_path / "train", outdir / "out.h5")
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert "\n" not in line and "--image-size" in line and "20x12" in line and "9x17" in line
    assert str(files[0]) in line
    assert_nothing_written(outdir)


@pytest.mark.slow
def test_a_truncated_image_stops_the_run_naming_it_and_leaves_nothing(tmp_path, run_mixup, outdir):
    files, _ = make_folder(tmp_path / "train")
    bad = files[5]
    bad.write_bytes(bad.read_bytes()[:60])
    proc = run_mixup("augment", tmp_path / "train", outdir / "out.h5", "--image-size", "8")
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and str(bad) in line and "--skip-bad-images" in line
    assert_nothing_written(outdir)


@pytest.mark.slow
def test_skip_bad_images_leaves_them_out_and_lists_them(tmp_path, run_cli):
    files, _ = make_folder(tmp_path / "train")
    bad, junk = files[5], files[7]
    bad.write_bytes(bad.read_bytes()[:60])
    junk.write_bytes(b"not an image at all")
    out = tmp_path / "out.h5"
    result = run_cli("augment", tmp_path / "train", out, "--seed", "4", "--skip-bad-images")
    assert result.exit_code == 0, result.output
    kept = [f for f in files if f not in (bad, junk)]
    data = load_output(out)
    np.testing.assert_array_equal(data["x"], mixed(pillow_rows(kept), data["lam"], data["partner"]))
    record = read_sidecar(out)
    skipped = record["parameters"]["images"]["skipped"]
    assert [item["path"] for item in skipped] == [str(bad.resolve()), str(junk.resolve())]
    assert [item["path"] for item in record["input"]["files"]] == [str(f.resolve()) for f in kept]
    verified = subprocess.run(
        [sys.executable, "-m", "mixup_cli", "verify", str(out)], capture_output=True, text=True, cwd=REPO
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.slow
def test_images_without_class_folders_are_x_alone(tmp_path, run_cli, run_mixup, outdir):
    files, _ = make_folder(tmp_path / "scratch", classes=("only",))
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in files:
        os.link(f, flat / f.name)
    out = tmp_path / "out.h5"
    result = run_cli("augment", flat, out, "--no-y", "--seed", "5")
    assert result.exit_code == 0, result.output
    data = load_output(out)
    assert set(data) == {"x", "lam", "partner"}
    flat_files = sorted(flat.iterdir(), key=lambda p: p.name)
    np.testing.assert_array_equal(data["x"], mixed(pillow_rows(flat_files), data["lam"], data["partner"]))
    proc = run_mixup("augment", flat, outdir / "out.h5", "--y-key", "y")
    assert proc.returncode == 1 and "--no-y" in proc.stderr and "\n" not in proc.stderr.strip()
    assert_nothing_written(outdir)


def test_an_image_beside_class_folders_is_refused(tmp_path, run_mixup, outdir):
    files, _ = make_folder(tmp_path / "train")
    stray = tmp_path / "train" / "stray.png"
    stray.write_bytes(files[0].read_bytes())
    proc = run_mixup("augment", tmp_path / "train", outdir / "out.h5")
    assert proc.returncode == 1 and str(stray) in proc.stderr
    assert_nothing_written(outdir)


@pytest.mark.slow
def test_image_options_on_other_inputs_are_usage_errors(tmp_path, run_mixup, outdir):
    write_h5(tmp_path / "in.h5", x=np.zeros((4, 2), np.float32))
    proc = run_mixup("augment", tmp_path / "in.h5", outdir / "out.h5", "--image-size", "8")
    assert proc.returncode == 2 and "folder of images" in proc.stderr
    proc = run_mixup("augment", tmp_path / "in.h5", outdir / "out.h5", "--image-size", "8x")
    assert proc.returncode == 2 and "--image-size" in proc.stderr
    assert_nothing_written(outdir)


def test_output_does_not_depend_on_the_batch_size(tmp_path, run_cli):
    make_folder(tmp_path / "train", per_class=7)
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    assert run_cli("augment", tmp_path / "train", a, "--seed", "9", "--block-rows", "8").exit_code == 0
    result = run_cli("augment", tmp_path / "train", b, "--seed", "9", "--block-rows", "8", "--batch-size", "3")
    assert result.exit_code == 0, result.output
    for key, value in load_output(a).items():
        np.testing.assert_array_equal(value, load_output(b)[key], err_msg=key)


def test_class_pairings_read_partners_by_index(tmp_path, run_cli):
    files, labels = make_folder(tmp_path / "train", per_class=6)
    out = tmp_path / "out.h5"
    result = run_cli(
        "augment", tmp_path / "train", out, "--seed", "6", "--pairing", "within-class", "--block-rows", "4"
    )
    assert result.exit_code == 0, result.output
    data = load_output(out)
    assert (labels[data["partner"]] == labels).all()
    np.testing.assert_array_equal(data["x"], mixed(pillow_rows(files), data["lam"], data["partner"]))


def test_verify_recomputes_an_image_output_and_sees_a_changed_image(tmp_path, run_cli):
    files, _ = make_folder(tmp_path / "train")
    out = tmp_path / "out.h5"
    assert run_cli("augment", tmp_path / "train", out, "--seed", "8", "--image-size", "10x6").exit_code == 0
    result = run_cli("verify", out)
    assert result.exit_code == 0, result.output
    assert "recompute" in result.output
    picture(np.random.default_rng(99), (20, 12), "RGB").save(files[2], "PNG" if files[2].suffix == ".png" else None)
    result = run_cli("verify", out)
    assert result.exit_code != 0
    assert "input files" in result.output


def test_help_and_an_hdf5_run_do_not_import_pillow(tmp_path):
    write_h5(tmp_path / "in.h5", x=np.zeros((8, 2), np.float32), y=np.arange(8) % 2)
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from mixup_cli.cli import cli\n"
        "assert CliRunner().invoke(cli, ['augment', '--help']).exit_code == 0\n"
        f"r = CliRunner().invoke(cli, ['augment', {str(tmp_path / 'in.h5')!r}, {str(tmp_path / 'o.h5')!r}, '-q'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print('PIL' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_without_pillow_the_extra_is_named(tmp_path, run_cli, monkeypatch):
    make_folder(tmp_path / "train", per_class=1)
    monkeypatch.setitem(sys.modules, "PIL", None)  # `import PIL` now fails
    result = run_cli("augment", tmp_path / "train", tmp_path / "out.h5")
    assert result.exit_code == 1
    assert "mixup-cli[images]" in result.stderr


@pytest.mark.slow
def test_verify_checks_the_law_on_the_images_the_run_kept(tmp_path, run_cli):
    """--skip-bad-images: verify's law check reads the classes of the files the run read."""
    rng = np.random.default_rng(1)
    for c in range(3):
        (tmp_path / "train" / f"c{c}").mkdir(parents=True)
        for i in range(100):
            picture(rng, (2, 2), "RGB").save(tmp_path / "train" / f"c{c}" / f"{i:03d}.png")
    (tmp_path / "train" / "c1" / "050.png").write_bytes(b"junk")
    out = tmp_path / "out.h5"
    args = ("--pairing", "within-class", "--skip-bad-images", "--seed", "2")
    assert run_cli("augment", tmp_path / "train", out, *args).exit_code == 0
    result = run_cli("verify", out)
    assert result.exit_code == 0, result.output
    assert "ok    law: 299 mixed rows" in result.output


def test_image_folders_listed_are_a_set_with_one_set_of_classes(tmp_path, run_cli):
    files_a, labels_a = make_folder(tmp_path / "splits" / "a", per_class=2, size=(10, 6))
    files_b, labels_b = make_folder(tmp_path / "splits" / "b", per_class=3, sizes=[(10, 6), (7, 9)], seed=1)
    (tmp_path / "splits.txt").write_text("splits/a\nsplits/b\n")
    out = tmp_path / "mixed"
    result = run_cli("augment", "--inputs-from", tmp_path / "splits.txt", out, "--seed", "4", "--image-size", "8x6")
    assert result.exit_code == 0, result.output
    parts = [load_output(out / name) for name in ("a", "b")]  # folders of .npy files, named as the inputs
    data = {key: np.concatenate([part[key] for part in parts]) for key in ("x", "y", "lam", "partner")}
    x = pillow_rows(files_a + files_b, size=(8, 6))
    np.testing.assert_array_equal(data["x"], mixed(x, data["lam"], data["partner"]))
    onehot = np.eye(3, dtype=np.float32)[np.concatenate([labels_a, labels_b])]
    lam = data["lam"].astype(np.float32)[:, None]
    np.testing.assert_allclose(data["y"], lam * onehot + (1 - lam) * onehot[data["partner"]], rtol=1e-6)
    for name, files in (("a", files_a), ("b", files_b)):
        record = read_sidecar(out / name)
        assert record["parameters"]["class_names"] == ["cat", "dog", "emu"]
        assert record["parameters"]["images"]["size"] == [8, 6]
        assert [f["path"] for f in record["input"]["files"]] == [str(f.resolve()) for f in files]
    result = run_cli("verify", out)
    assert result.exit_code == 0, result.output
    # The folder holding both is ONE input: its subfolders a and b are its classes.
    one = tmp_path / "one.h5"
    assert run_cli("augment", tmp_path / "splits", one, "--seed", "4", "--image-size", "8x6").exit_code == 0
    with h5py.File(one) as f:
        assert json.loads(f.attrs["class_names"]) == ["a", "b"] and len(f["x"]) == len(files_a + files_b)


@pytest.mark.slow
def test_a_set_of_image_folders_with_other_classes_is_refused(tmp_path, run_mixup, outdir):
    make_folder(tmp_path / "a", per_class=1)
    make_folder(tmp_path / "b", classes=("cat", "dog"), per_class=1, seed=1)
    proc = run_mixup("augment", tmp_path / "a", tmp_path / "b", outdir / "mixed", "--image-size", "8")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert f"{tmp_path / 'b'}: lacks the class folder 'emu' (2 classes, {tmp_path / 'a'} has 3)" in proc.stderr
    write_h5(tmp_path / "one.h5", x=np.zeros((4, 2), np.float32))
    write_h5(tmp_path / "two.h5", x=np.zeros((4, 2), np.float32))
    proc = run_mixup("augment", tmp_path / "one.h5", tmp_path / "two.h5", outdir / "mixed", "--image-size", "8")
    assert proc.returncode == 2 and "--image-size" in proc.stderr
    assert_nothing_written(outdir)


def test_resume_knows_a_finished_image_run_and_refuses_other_image_options(tmp_path, run_cli):
    make_folder(tmp_path / "train")
    out = tmp_path / "out.h5"
    args = ("augment", tmp_path / "train", out, "--seed", "3", "--image-size", "8")
    assert run_cli(*args).exit_code == 0
    before = out.stat().st_mtime_ns
    again = run_cli(*args, "--resume")
    assert again.exit_code == 0 and "already complete" in again.stderr
    other = run_cli(*args[:-1], "10", "--resume")
    assert other.exit_code == 1 and "--overwrite" in other.stderr
    assert out.stat().st_mtime_ns == before


@pytest.mark.slow
def test_a_16_bit_image_is_refused_not_clipped(tmp_path, run_mixup, outdir):
    make_folder(tmp_path / "train", per_class=2)
    deep = tmp_path / "train" / "cat" / "deep.png"
    Image.fromarray(np.full((12, 20), 40000, dtype=np.uint16)).save(deep)
    proc = run_mixup("augment", tmp_path / "train", outdir / "out.h5", "--image-size", "8")
    assert proc.returncode == 1 and str(deep) in proc.stderr and "more than 8 bits" in proc.stderr
    assert_nothing_written(outdir)


def test_verify_names_a_changed_decoder_when_the_rows_differ(tmp_path, run_cli):
    files, _ = make_folder(tmp_path / "train")
    out = tmp_path / "out.h5"
    assert run_cli("augment", tmp_path / "train", out, "--seed", "8").exit_code == 0
    sidecar = tmp_path / "out.h5.provenance.json"
    record = json.loads(sidecar.read_text())
    assert run_cli("verify", out).exit_code == 0
    record["parameters"]["images"]["decoder"]["jpg"] = "0.1"  # as if another libjpeg had decoded them
    sidecar.write_text(json.dumps(record))
    assert run_cli("verify", out).exit_code == 0  # same rows: nothing to say
    picture(np.random.default_rng(3), (20, 12), "RGB").save(files[0])  # now a row differs
    result = run_cli("verify", out)
    assert result.exit_code != 0
    assert "jpg 0.1 then" in result.output and "may decode them differently" in result.output


@pytest.mark.slow
def test_a_set_of_image_folders_skips_bad_files_in_any_of_them(tmp_path, run_cli, run_mixup, outdir):
    make_folder(tmp_path / "a", per_class=2)
    make_folder(tmp_path / "b", per_class=2, seed=1)
    bad = tmp_path / "b" / "dog" / "a1.png"
    bad.write_bytes(b"not an image")
    proc = run_mixup("augment", tmp_path / "a", tmp_path / "b", outdir / "mixed", "--image-size", "8")
    assert proc.returncode == 1 and f"{bad}: cannot decode this image" in proc.stderr
    assert_nothing_written(outdir)
    out = tmp_path / "mixed"
    args = ("--image-size", "8", "--skip-bad-images", "--seed", "3")
    result = run_cli("augment", tmp_path / "a", tmp_path / "b", out, *args)
    assert result.exit_code == 0, result.output
    assert [len(load_output(out / name)["x"]) for name in ("a", "b")] == [6, 6]  # b: 7 files, 1 left out
    records = [read_sidecar(out / name)["parameters"] for name in ("a", "b")]
    assert records[0] == records[1]  # one set, one record of its parameters
    assert [item["path"] for item in records[0]["images"]["skipped"]] == [str(bad.resolve())]
    assert run_cli("verify", out).exit_code == 0


@pytest.mark.slow
def test_a_set_of_image_folders_is_not_resumed_after_its_images_changed(tmp_path, run_cli):
    import signal
    import time

    from conftest import default_signals, mixup_executable

    make_folder(tmp_path / "a", per_class=4, size=(8, 6))
    make_folder(tmp_path / "b", per_class=4, size=(8, 6), seed=1)
    args = [tmp_path / "a", tmp_path / "b", tmp_path / "out", "--seed", "3", "--block-rows", "4", "--batch-size", "2"]
    flag = tmp_path / "paused.flag"
    proc = subprocess.Popen(
        mixup_executable() + ["augment", *map(str, args)],
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, MIXUP_TEST_PAUSE=f"progress@4:{flag}"),
        preexec_fn=default_signals,
    )
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    flag.unlink()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "--resume" in stderr, stderr
    make_folder(
        tmp_path / "new", per_class=4, size=(8, 6), seed=2
    )  # every image of a replaced, inside its class folder
    for old, new in zip(sorted((tmp_path / "a").rglob("*.*")), sorted((tmp_path / "new").rglob("*.*"))):
        new.replace(old)
    result = run_cli("augment", *args, "--resume")
    assert result.exit_code == 1 and "cannot resume, the interrupted run differs: input.inputs_state" in result.stderr
    assert run_cli("augment", *args).exit_code == 0  # without --resume: started over on the images as they are
    fresh = tmp_path / "fresh"
    assert run_cli("augment", tmp_path / "a", tmp_path / "b", fresh, *args[3:]).exit_code == 0
    for name in ("a", "b"):
        got, want = load_output(tmp_path / "out" / name), load_output(fresh / name)
        assert {k: v.tobytes() for k, v in got.items()} == {k: v.tobytes() for k, v in want.items()}
    assert run_cli("verify", tmp_path / "out").exit_code == 0


def test_verify_decodes_apart_from_the_run_and_catches_a_wrong_fast_path(tmp_path, run_cli, monkeypatch):
    # A planted fault in the run's path (Pillow opening the file by name, from the
    # thread pool) that verify's path (bytes read whole, decoded one at a time) lacks.
    from mixup_cli.io import images

    files, _ = make_folder(tmp_path / "train", size=(8, 8))
    fast_source = images.Reader._source

    def one_file_late(self, item):
        if not self._fast:
            return fast_source(self, item)
        listed = sorted(files)
        return listed[(listed.index(item) + 1) % len(listed)]

    monkeypatch.setattr(images.Reader, "_source", one_file_late)
    assert run_cli("augment", tmp_path / "train", tmp_path / "out.h5", "--seed", "3").exit_code == 0
    # The fault is still there: a verify that shared the run's path would reproduce it and pass.
    result = run_cli("verify", tmp_path / "out.h5")
    assert result.exit_code == 1 and "recompute" in result.output and "FAIL" in result.output.upper()
    monkeypatch.undo()
    assert run_cli("augment", tmp_path / "train", tmp_path / "good.h5", "--seed", "3").exit_code == 0
    assert run_cli("verify", tmp_path / "good.h5").exit_code == 0
