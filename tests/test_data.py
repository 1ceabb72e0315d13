"""alexnet_jax.data: offline preparation (array_record, no TF), stores, uint8 loaders, device augmentation.

References are independent of the code under test: numpy / Pillow / scipy re-implementations of the
papers' formulas (K12 §2, §4.1; LC98 §III), the TFDS parser, and the source arrays themselves.
"""

from __future__ import annotations

import collections
import gzip
import importlib
import io
import json
import logging
import math
import os
import pickle
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import data as D
from alexnet_jax.config import Config

A = importlib.import_module("alexnet_jax.data.augment")
F = importlib.import_module("alexnet_jax.data.files")
L = importlib.import_module("alexnet_jax.data.loader")
PR = importlib.import_module("alexnet_jax.data.preparation")
S = importlib.import_module("alexnet_jax.data.sources")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLES = SHARED / "imagenet_samples" / "imagenet_samples_100.tar"
N_TRAIN, N_TEST = 64, 10
EIGVAL = np.array([0.2175, 0.0188, 0.0045])                # fb.resnet.torch, written out again here
EIGVEC = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])


# ----------------------------------------------------------------------------------------------------
# builders of tiny source files
# ----------------------------------------------------------------------------------------------------
def write_idx_gz(path: Path, arr: np.ndarray) -> None:
    arr = np.asarray(arr, np.uint8)
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def tiny_mnist_arrays(seed: int = 0):
    """Random images whose pixel (0, 0) holds the example id (train 0..63, test 0..9)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        x[:, 0, 0] = np.arange(n)
        out[split] = (x, (np.arange(n) % 10).astype(np.uint8))
    return out


def jpeg_bytes(arr: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, np.uint8)).save(buf, format=fmt, quality=95)
    return buf.getvalue()


def smooth_image(rng, h: int, w: int) -> np.ndarray:
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def truncated_jpeg(rng) -> bytes:
    b = jpeg_bytes(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    return b[: len(b) // 2]


def make_tar(path: Path, files: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def ref_store256(data: bytes) -> np.ndarray:
    """K12 §2 with Pillow only: full decode, shorter side -> 256 (bilinear, antialiased), centre 256x256."""
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = 256 / min(w, h)
        nw, nh = max(256, round(w * s)), max(256, round(h * s))
        im = im.resize((nw, nh), Image.BILINEAR)
        t, l = (nh - 256) // 2, (nw - 256) // 2
        return np.asarray(im)[t:t + 256, l:l + 256]


def ids_of(batch) -> np.ndarray:
    """Example ids of a tiny-MNIST uint8 batch (pixel (0, 0))."""
    return batch["image"][:, 0, 0, 0].astype(int)


def take(it, n):
    return [next(it) for _ in range(n)]


# ----------------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    """A tiny MNIST prepared from IDX .gz files: returns (data_dir, arrays)."""
    src = tmp_path_factory.mktemp("mnist_src")
    arrays = tiny_mnist_arrays()
    for split, (im_f, lb_f) in PR.MNIST_FILES.items():
        write_idx_gz(src / im_f, arrays[split][0])
        write_idx_gz(src / lb_f, arrays[split][1])
    dd = tmp_path_factory.mktemp("tfds_mnist")
    path = D.prepare("mnist", str(src), str(dd), workers=0)
    assert path == dd / "mnist" / "3.0.1"
    return dd, arrays


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    dd = tmp_path_factory.mktemp("tfds_digits")
    D.ensure_prepared(Config(dataset="digits", data_dir=str(dd)))   # prepared on first use
    return dd


def mnist_cfg(dd, **kw) -> Config:
    base = dict(dataset="mnist", data_dir=str(dd), augment="none", input_size=28, num_workers=2, seed=0)
    return Config(**{**base, **kw})


@pytest.fixture(scope="session")
def cifar_tree(tmp_path_factory):
    """train/<class>/<nnnn>.jpg, 10 per class, plus one truncated JPEG train/cat/9999.jpg."""
    root = tmp_path_factory.mktemp("cifar_tree")
    rng = np.random.default_rng(1)
    files = {}
    for c in PR.CIFAR10_CLASSES:
        for i in range(10):
            files[f"train/{c}/{i:04d}.jpg"] = jpeg_bytes(smooth_image(rng, 32, 32))
    files["train/cat/9999.jpg"] = truncated_jpeg(rng)
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root, files


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory, cifar_tree):
    dd = tmp_path_factory.mktemp("tfds_cifar")
    D.prepare("cifar10", str(cifar_tree[0]), str(dd), workers=0)
    return dd


@pytest.fixture(scope="session")
def inet_tree(tmp_path_factory):
    """Class-folder ImageNet tree (wnid folders), photos of assorted sizes, one corrupt file."""
    root = tmp_path_factory.mktemp("inet_tree")
    rng = np.random.default_rng(3)
    files = {}
    for split, wnid, n in (("train", "n01440764", 4), ("train", "n01443537", 4), ("val", "n01443537", 2)):
        for i in range(n):
            files[f"{split}/{wnid}/{wnid}_{i}.JPEG"] = jpeg_bytes(smooth_image(rng, 260 + 40 * i, 300 + 170 * i))
    files["train/n01440764/n01440764_bad.JPEG"] = truncated_jpeg(rng)
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root, files


@pytest.fixture(scope="session")
def inet_dir(tmp_path_factory, inet_tree):
    """The tree prepared in all three stores (one data_dir)."""
    dd = tmp_path_factory.mktemp("tfds_inet")
    for name in ("imagenet2012", "imagenet2012/jpeg256", "imagenet2012/raw256"):
        D.prepare(name, str(inet_tree[0]), str(dd), workers=0)
    return dd


PIPELINES = ("memory", "stream")


@pytest.fixture(params=PIPELINES)
def pipeline(request, monkeypatch):
    """Runs a test on the in-memory path (the default for the tiny datasets) and on the streaming path."""
    if request.param == "stream":
        monkeypatch.setenv(S.IN_MEMORY_ENV, "0")
    else:
        monkeypatch.delenv(S.IN_MEMORY_ENV, raising=False)
    return request.param


# ----------------------------------------------------------------------------------------------------
# catalog, files
# ----------------------------------------------------------------------------------------------------
def test_catalog_names_and_unknown_store(tmp_path):
    assert D.dataset_names() == ("digits", "mnist", "cifar10", "imagenet2012", "imagenet2012/jpeg256",
                                 "imagenet2012/raw256")
    for call in (lambda: D.prepare("imagenet2012/raw999", str(tmp_path), str(tmp_path / "dd")),
                 lambda: D.dataset_dir("imagenet2012/raw999", str(tmp_path)),
                 lambda: D.make_train_loader(Config(dataset="imagenet2012/raw999", data_dir=str(tmp_path)),
                                             batch_size=2)):
        with pytest.raises(ValueError) as e:
            call()
        assert "raw999" in str(e.value) and "imagenet2012/raw256" in str(e.value) and "imagenet2012/jpeg256" in str(e.value)
    assert not (tmp_path / "dd").exists()


def test_import_is_light():
    code = ("import sys; import alexnet_jax.data as D; from alexnet_jax.data import catalog;"
            "catalog.dataset_names(); D.dataset_names(); D.AUGMENTS;"
            "heavy = [m for m in ('tensorflow_datasets', 'grain', 'jax', 'tensorflow') if m in sys.modules];"
            "assert not heavy, heavy; print('OK')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]


def test_read_idx(tmp_path):
    x = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx_gz(tmp_path / "a.gz", x)
    np.testing.assert_array_equal(D.read_idx(tmp_path / "a.gz"), x)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX"):
        D.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="truncated"):
        D.read_idx(tmp_path / "short")


def test_iter_image_files_relative_names(tmp_path):
    rng = np.random.default_rng(0)
    jpg = jpeg_bytes(smooth_image(rng, 8, 8))
    (tmp_path / "dir" / "a" / "b").mkdir(parents=True)
    (tmp_path / "dir" / "a" / "b" / "x.jpg").write_bytes(jpg)
    (tmp_path / "dir" / "y.PNG").write_bytes(jpeg_bytes(smooth_image(rng, 8, 8), "PNG"))
    (tmp_path / "dir" / "notes.txt").write_text("not an image")
    make_tar(tmp_path / "dir" / "a" / "inner.tar", {"deep/z.jpeg": jpg})
    make_tar(tmp_path / "t.tar.gz", {"top/q.jpg": jpg, "top/readme": b"x"}, "w:gz")
    names = [n for n, _ in D.iter_image_files(tmp_path / "dir")]
    assert names == ["a/b/x.jpg", "a/inner.tar/deep/z.jpeg", "y.PNG"]
    assert [n for n, _ in D.iter_image_files([tmp_path / "t.tar.gz", tmp_path / "dir" / "y.PNG"])] == [
        "top/q.jpg", "y.PNG"]
    assert dict(D.iter_image_files(tmp_path / "t.tar.gz"))["top/q.jpg"] == jpg
    with pytest.raises(FileNotFoundError, match="no such"):
        list(D.iter_image_files(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not an image"):
        list(D.iter_image_files(tmp_path / "dir" / "notes.txt"))
    assert len(D.read_image_files(tmp_path / "dir", limit=2)) == 2


def test_decode_images_stored_shapes():
    rng = np.random.default_rng(1)
    photo = jpeg_bytes(smooth_image(rng, 300, 520))
    x = D.decode_images("alexnet", [photo, photo])
    assert x.shape == (2, 256, 256, 3) and x.dtype == np.uint8
    assert np.abs(x[0].astype(int) - ref_store256(photo)).max() == 0
    c = D.decode_images(Config(augment="cifar", model="alexnet", input_size=32), [photo])
    with Image.open(io.BytesIO(photo)) as im:                  # shorter side 32 (300 -> 32, 520 -> 55), centre
        full = np.asarray(im.convert("RGB").resize((55, 32), Image.BILINEAR)).astype(int)
    errs = {o: np.abs(c[0] - full[:, o:o + 32]).mean() for o in range(0, 24)}
    assert c.shape == (1, 32, 32, 3) and errs[11] < 2.5      # a DCT-reduced decode (1/8 here): close to ...
    assert min(errs, key=errs.get) == 11                       # ... the centre crop, not another window
    g = D.decode_images(Config(augment="lenet", model="lenet5", input_size=32), [photo])
    assert g.shape == (1, 28, 28, 1)
    aug = A.Augment("none", 20, (20, 20, 3))
    assert D.decode_images(aug, [photo]).shape == (1, 20, 20, 3)
    with pytest.raises(ValueError, match="image 1"):
        D.decode_images("alexnet", [photo, b"garbage"])


def test_jpeg_decoders_agree():
    """simplejpeg (when installed) and Pillow give the same pixels, also for DCT-reduced decodes."""
    if F.simplejpeg is None:
        pytest.skip("simplejpeg is not installed: only the Pillow decoder is in use")
    if not SAMPLES.is_file():
        pytest.skip(f"shared ImageNet samples not found at {SAMPLES}")
    photos = [d for _, d in D.read_image_files(SAMPLES, limit=40)]
    for data in photos:
        a = F.decode_fit(data, (256, 256, 3))
        sj, F.simplejpeg = F.simplejpeg, None
        try:
            b = F.decode_fit(data, (256, 256, 3))
        finally:
            F.simplejpeg = sj
        np.testing.assert_array_equal(a, b)
    big = jpeg_bytes(smooth_image(np.random.default_rng(2), 1100, 1300))   # 4x DCT reduction
    np.testing.assert_array_equal(F.decode_fit(big, (256, 256, 3)), _pillow_only(F.decode_fit, big))


def _pillow_only(fn, *args):
    sj, F.simplejpeg = F.simplejpeg, None
    try:
        return fn(*args, (256, 256, 3))
    finally:
        F.simplejpeg = sj


def test_parse_example_matches_tfds(mnist_dir, inet_dir):
    import tensorflow_datasets as tfds

    for path in (mnist_dir[0] / "mnist" / "3.0.1", inet_dir / "imagenet2012" / "raw256" / "5.1.0"):
        src = S.RecordSource(path, "train")
        parser = tfds.builder_from_directory(str(path)).info.features._example_parser_np
        for i in range(min(5, len(src))):
            rec = src.read(i)
            ours, theirs = S.parse_example(rec), parser.parse_example(rec)
            assert int(ours["label"][0]) == int(theirs["label"])
            assert bytes(ours["image"][0]) == bytes(np.asarray(theirs["image"]).tobytes() if not isinstance(
                theirs["image"], bytes) else theirs["image"])


# ----------------------------------------------------------------------------------------------------
# prepare
# ----------------------------------------------------------------------------------------------------
def test_mnist_prepare_roundtrip_exact(mnist_dir):
    import tensorflow_datasets as tfds

    dd, arrays = mnist_dir
    for split, (x, y) in arrays.items():
        src = tfds.data_source("mnist", split=split, data_dir=str(dd))   # the stock catalog builder reads it
        assert len(src) == len(x)
        seen = set()
        for ex in src:
            i = int(ex["image"][0, 0, 0])
            seen.add(i)
            np.testing.assert_array_equal(ex["image"][..., 0], x[i])
            assert ex["label"] == y[i]
        assert seen == set(range(len(x)))
    b = tfds.builder_from_directory(str(dd / "mnist" / "3.0.1"))
    assert b.info.file_format.value == "array_record"
    assert b.info.features["image"].shape == (28, 28, 1) and b.info.features["label"].num_classes == 10


def test_prepare_reuses_existing(mnist_dir):
    dd, _ = mnist_dir
    assert D.prepare("mnist", "/nonexistent/source", str(dd)) == dd / "mnist" / "3.0.1"


def test_digits_split_stratified(digits_dir):
    from sklearn.datasets import load_digits

    info = D.dataset_info(Config(dataset="digits", data_dir=str(digits_dir)))
    assert info.splits == {"train": 1437, "test": 360}
    assert info.num_classes == 10 and info.image_shape == (32, 32, 1) and info.stored_shape == (28, 28, 1)
    import tensorflow_datasets as tfds

    src = tfds.data_source("digits", split="test", data_dir=str(digits_dir))
    labels = np.array([ex["label"] for ex in src])
    full = np.bincount(load_digits().target, minlength=10)
    assert np.all(np.abs(np.bincount(labels, minlength=10) - full * 360 / 1797) <= 1)
    ex = src[0]
    assert ex["image"].shape == (28, 28, 1) and ex["image"].dtype == np.uint8 and ex["image"].max() > 200
    imgs = np.stack([PR.digits_to_28(im) for im in load_digits().images])
    assert (np.abs(imgs.astype(int) - ex["image"].astype(int)).reshape(len(imgs), -1).max(1) == 0).any()


def _split_ids(dd, name, split):
    import tensorflow_datasets as tfds

    return [S._to_str(ex["id"]) for ex in tfds.data_source(name, split=split, data_dir=str(dd))]


def test_cifar_tree_prepare_validation_and_corrupt(cifar_tree, cifar_dir, tmp_path):
    root, files = cifar_tree
    path = cifar_dir / "cifar10" / "3.0.2"
    report = json.loads((path / PR.REPORT_FILE).read_text())
    assert report["num_skipped"] == 1 and report["skipped"][0].endswith("train/cat/9999.jpg")
    train, val = _split_ids(cifar_dir, "cifar10", "train"), _split_ids(cifar_dir, "cifar10", "validation")
    by_class = {}
    for k in files:
        by_class.setdefault(k.split("/")[1], []).append(k)
    expected_val = PR.stratified_holdout(by_class) - {"train/cat/9999.jpg"}
    assert set(val) == expected_val and len(val) >= 9
    assert not set(train) & set(val) and len(train) + len(val) == 100
    # same split from a .tar.gz of the same tree (streamed), and the original JPEG bytes are kept
    tgz = make_tar(tmp_path / "tree.tar.gz", {f"cifar/{k}": v for k, v in files.items()}, "w:gz")
    dd2 = tmp_path / "tfds"
    D.prepare("cifar10", str(tgz), str(dd2), workers=0)
    assert sorted(_split_ids(dd2, "cifar10", "validation")) == sorted(val)
    assert sorted(_split_ids(dd2, "cifar10", "train")) == sorted(train)
    import tensorflow_datasets as tfds

    src = tfds.data_source("cifar10", split="validation", data_dir=str(dd2))
    ex = src[0]
    want = np.asarray(Image.open(io.BytesIO(files[S._to_str(ex["id"])])).convert("RGB"))
    np.testing.assert_array_equal(ex["image"], want)
    info = D.dataset_info(Config(dataset="cifar10", data_dir=str(dd2), input_size=32))
    assert info.class_names == PR.CIFAR10_CLASSES
    assert info.splits == {"train": len(train), "validation": len(val)}


def test_cifar_python_pickles(tmp_path):
    rng = np.random.default_rng(2)

    def batch(n):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        return x, [i % 10 for i in range(n)]

    (xtr, ytr), (xte, yte) = batch(100), batch(10)
    files = {"cifar-10-batches-py/data_batch_1": pickle.dumps({b"data": xtr, b"labels": ytr}),
             "cifar-10-batches-py/test_batch": pickle.dumps({b"data": xte, b"labels": yte})}
    tgz = make_tar(tmp_path / "cifar-10-python.tar.gz", files, "w:gz")
    D.prepare("cifar10", str(tgz), str(tmp_path / "tfds"), workers=0)
    import tensorflow_datasets as tfds

    src = tfds.data_source("cifar10", split="test", data_dir=str(tmp_path / "tfds"))
    for ex in src:
        i = int(S._to_str(ex["id"]).split("_")[1])
        np.testing.assert_array_equal(ex["image"], xte[i].reshape(3, 32, 32).transpose(1, 2, 0))
        assert ex["label"] == yte[i]
    info = D.dataset_info(Config(dataset="cifar10", data_dir=str(tmp_path / "tfds")))
    assert info.splits == {"train": 90, "validation": 10, "test": 10}
    val_labels = [ex["label"] for ex in tfds.data_source("cifar10", split="validation",
                                                          data_dir=str(tmp_path / "tfds"))]
    assert sorted(val_labels) == list(range(10))   # one per class


def test_imagenet_stores_prepare_and_read(inet_tree, inet_dir):
    """Every store of the same tree: same examples and labels; raw256 = K12 §2 (Pillow reference) exactly,
    the originals decoded by the loader = raw256 exactly, jpeg256 within JPEG error; bad file reported."""
    import tensorflow_datasets as tfds

    _, files = inet_tree
    synsets = PR.imagenet_synsets()
    got = {}
    for name in ("imagenet2012", "imagenet2012/jpeg256", "imagenet2012/raw256"):
        path = D.dataset_dir(name, str(inet_dir))
        assert path == inet_dir / name / "5.1.0"
        report = json.loads((path / PR.REPORT_FILE).read_text())
        assert report["num_skipped"] == 1 and report["skipped"][0].endswith("n01440764_bad.JPEG")
        info = D.dataset_info(Config(dataset=name, data_dir=str(inet_dir), input_size=224))
        assert info.num_classes == 1000 and info.splits == {"train": 8, "validation": 2}
        assert info.stored_shape == (256, 256, 3)
        for split in ("train", "validation"):
            src = S.RecordSource(path, split)
            for i in range(len(src)):
                rec = src.record(i)
                key = rec["name"]
                assert synsets[rec["label"]] == key.split("_")[0]
                got.setdefault((split, key), {})[name] = src.decode(rec)
        if name.endswith("raw256"):
            raw = tfds.builder_from_directory(str(path)).as_data_source("train")[0]["image"]
            assert raw.shape == (256, 256, 3) and raw.dtype == np.uint8     # TFDS reads it too
    assert len(got) == 10
    for (split, key), v in got.items():
        rel = next(k for k in files if k.endswith("/" + key) and k.startswith(split[:3]))
        ref = ref_store256(files[rel])
        np.testing.assert_array_equal(v["imagenet2012/raw256"], ref)
        np.testing.assert_array_equal(v["imagenet2012"], ref)
        err = np.abs(v["imagenet2012/jpeg256"].astype(int) - ref)
        assert err.mean() < 2.0 and err.max() < 40
    jpeg_rec = S.RecordSource(inet_dir / "imagenet2012" / "jpeg256" / "5.1.0", "train").record(0)
    assert bytes(jpeg_rec["image"][:2]) == b"\xff\xd8"
    raw_rec = S.RecordSource(inet_dir / "imagenet2012" / "raw256" / "5.1.0", "train").record(0)
    assert len(raw_rec["image"]) == 256 * 256 * 3


def test_imagenet_ilsvrc_tars(tmp_path, caplog):
    rng = np.random.default_rng(4)
    inner = {}
    for wnid in ("n01440764", "n01443537"):
        members = {f"{wnid}_{i}.JPEG": jpeg_bytes(smooth_image(rng, 40, 50 + i)) for i in range(2)}
        inner[f"{wnid}.tar"] = make_tar(tmp_path / f"{wnid}.tar", members).read_bytes()
    # a PNG named .JPEG (re-encoded to JPEG, as the stock builder does) and a corrupt file (skipped)
    inner["n01484850.tar"] = make_tar(tmp_path / "n01484850.tar", {
        "n01484850_0.JPEG": jpeg_bytes(smooth_image(rng, 30, 30), "PNG"),
        "n01484850_1.JPEG": truncated_jpeg(rng)}).read_bytes()
    manual = tmp_path / "manual"
    manual.mkdir()
    make_tar(manual / "ILSVRC2012_img_train.tar", inner)
    make_tar(manual / "ILSVRC2012_img_val.tar",
             {f"ILSVRC2012_val_{i:08d}.JPEG": jpeg_bytes(smooth_image(rng, 30, 40)) for i in (3, 1, 2, 4)})
    with caplog.at_level(logging.WARNING):
        path = D.prepare("imagenet2012", str(manual), str(tmp_path / "tfds"), workers=0)
    assert "n01484850_1.JPEG" in caplog.text
    assert json.loads((path / PR.REPORT_FILE).read_text())["num_skipped"] == 1
    import tensorflow_datasets as tfds

    synsets = PR.imagenet_synsets()
    labels_txt = Path(os.fspath(tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")))
    val_wnids = labels_txt.read_text().split()[:4]
    dd = str(tmp_path / "tfds")
    val = {S._to_str(ex["file_name"]): synsets[ex["label"]]
           for ex in tfds.data_source("imagenet2012", split="validation", data_dir=dd)}
    assert val == {f"ILSVRC2012_val_{i:08d}.JPEG": val_wnids[i - 1] for i in (1, 2, 3, 4)}
    src = tfds.data_source("imagenet2012", split="train", data_dir=dd)
    train = {S._to_str(ex["file_name"]): synsets[ex["label"]] for ex in src}
    assert train == {f"{w}_{i}.JPEG": w for w in ("n01440764", "n01443537") for i in (0, 1)} | {
        "n01484850_0.JPEG": "n01484850"}
    raw = tfds.builder_from_directory(str(path)).as_data_source(
        "train", decoders={"image": tfds.decode.SkipDecoding()})
    assert all(ex["image"][:2] == b"\xff\xd8" for ex in raw)   # all stored as JPEG
    # the same tars into the raw store: the members are read in place (by offset) and match
    rp = D.prepare("imagenet2012/raw256", str(manual), dd, workers=0)
    rsrc = S.RecordSource(rp, "train")
    recs = {rsrc.record(i)["name"]: rsrc.decode(rsrc.record(i)) for i in range(len(rsrc))}
    with tarfile.open(tmp_path / "n01440764.tar") as t:
        np.testing.assert_array_equal(recs["n01440764_1.JPEG"],
                                      ref_store256(t.extractfile("n01440764_1.JPEG").read()))


def test_not_prepared_error_names_command(tmp_path, monkeypatch):
    cfg = Config(dataset="mnist", data_dir=str(tmp_path / "empty"))
    with pytest.raises(D.DatasetNotPreparedError) as e:
        D.ensure_prepared(cfg)
    msg = str(e.value)
    assert "'mnist'" in msg and str((tmp_path / "empty").resolve()) in msg
    assert f"alexnet-jax prepare mnist --source PATH --data-dir {(tmp_path / 'empty').resolve()}" in msg
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env_dir"))
    with pytest.raises(D.DatasetNotPreparedError, match="env_dir"):
        D.make_train_loader(Config(dataset="cifar10"), batch_size=4)
    with pytest.raises(D.DatasetNotPreparedError, match="imagenet2012/raw256"):
        D.dataset_dir("imagenet2012/raw256")


def test_wrong_source_leaves_nothing(tmp_path, capfd):
    dd = tmp_path / "dd"
    bad_layout = tmp_path / "flat"
    bad_layout.mkdir()
    (bad_layout / "x.JPEG").write_bytes(jpeg_bytes(smooth_image(np.random.default_rng(0), 8, 8)))
    wrong_classes = tmp_path / "wrong"
    (wrong_classes / "train" / "not_a_cifar_class").mkdir(parents=True)
    (wrong_classes / "train" / "not_a_cifar_class" / "x.jpg").write_bytes((bad_layout / "x.JPEG").read_bytes())
    cases = [("imagenet2012/raw256", tmp_path / "missing", "does not exist"),
             ("imagenet2012/jpeg256", bad_layout, "train/<class>/<image>"),
             ("cifar10", wrong_classes, "unknown class folder"),
             ("mnist", bad_layout, "IDX files"),
             ("imagenet2012", None, "--source is needed")]
    for name, src, msg in cases:
        with pytest.raises(D.SourceError, match=msg):
            D.prepare(name, src, str(dd))
    assert not dd.exists() or not any(dd.rglob("*")), sorted(dd.rglob("*"))
    out = capfd.readouterr()
    assert "Downloading and preparing" not in out.out + out.err


def _records(path, split):
    src = S.RecordSource(path, split)
    return [(r["name"], r["label"], bytes(r["image"])) for r in (src.record(i) for i in range(len(src)))]


def test_interrupted_prepare_resumes(inet_tree, tmp_path, monkeypatch, caplog):
    """Shards of 2 records: an interruption after 2 shards keeps them in the staging folder; the next run
    writes only the others, and the result equals an uninterrupted prepare."""
    root, _ = inet_tree
    dd = tmp_path / "dd"
    real = PR.write_shard
    calls, fail = [], {"at": 3}

    def flaky(task):
        calls.append((task["split"], task["shard"]))
        if len(calls) == fail["at"]:
            fail["at"] = None                             # one interruption
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(PR, "write_shard", flaky)
    with pytest.raises(KeyboardInterrupt):
        D.prepare("imagenet2012/jpeg256", root, dd, workers=0, shard_size=2)
    staging = dd / "imagenet2012" / "jpeg256" / ("5.1.0" + PR.STAGING_SUFFIX)
    assert staging.is_dir() and len(list((staging / "done").iterdir())) == 2
    assert not (dd / "imagenet2012" / "jpeg256" / "5.1.0").exists()
    first = list(calls)
    calls.clear()
    with caplog.at_level(logging.WARNING):
        path = D.prepare("imagenet2012/jpeg256", root, dd, workers=0, shard_size=2)
    shards = {("train", s) for s in range(5)} | {("validation", 0)}   # 9 train files (one bad), 2 val
    assert set(calls) == shards - set(first[:2]) and len(calls) == len(shards) - 2
    assert not staging.exists() and "resuming" in caplog.text
    monkeypatch.setattr(PR, "write_shard", real)
    clean = D.prepare("imagenet2012/jpeg256", root, tmp_path / "clean", workers=0, shard_size=2)
    for split in ("train", "validation"):
        assert _records(path, split) == _records(clean, split)
    # a staging folder from another source is discarded, not resumed
    monkeypatch.setattr(PR, "write_shard", flaky)
    calls.clear()
    fail["at"] = 2
    with pytest.raises(KeyboardInterrupt):
        D.prepare("imagenet2012/raw256", root, dd, workers=0, shard_size=2)
    other = tmp_path / "other_tree"
    (other / "train" / "n01440764").mkdir(parents=True)
    (other / "train" / "n01440764" / "a.JPEG").write_bytes(jpeg_bytes(smooth_image(np.random.default_rng(5), 9, 9)))
    (other / "train" / "n01440764" / "b.JPEG").write_bytes(jpeg_bytes(smooth_image(np.random.default_rng(6), 9, 9)))
    monkeypatch.setattr(PR, "write_shard", real)
    p2 = D.prepare("imagenet2012/raw256", other, dd, workers=0, shard_size=2)
    assert D.dataset_info(Config(dataset="imagenet2012/raw256", data_dir=str(dd))).splits == {
        "train": 1, "validation": 1}
    assert p2.is_dir()


def test_prepare_process_pool_same_records(inet_tree, inet_dir, tmp_path):
    root, _ = inet_tree
    path = D.prepare("imagenet2012/raw256", root, tmp_path, workers=2, shard_size=3)
    ref = inet_dir / "imagenet2012" / "raw256" / "5.1.0"
    for split in ("train", "validation"):
        assert sorted(_records(path, split)) == sorted(_records(ref, split))
    assert len([f for f in os.listdir(path) if "train.array_record" in f]) == 3


# ----------------------------------------------------------------------------------------------------
# loaders
# ----------------------------------------------------------------------------------------------------
def test_train_loader_epochs_and_determinism(mnist_dir, pipeline):
    dd, arrays = mnist_dir
    cfg = mnist_cfg(dd)
    it = D.make_train_loader(cfg, batch_size=8)
    assert it.pipeline == pipeline and it.steps_per_epoch == N_TRAIN // 8
    a = take(it, 16)
    b = take(D.make_train_loader(cfg, batch_size=8), 16)
    c = take(D.make_train_loader(cfg, batch_size=8, seed=1), 16)
    for x, y in zip(a, b, strict=True):
        for k in ("image", "label", "index"):
            np.testing.assert_array_equal(x[k], y[k])
    assert a[0]["image"].shape == (8, 28, 28, 1) and a[0]["image"].dtype == np.uint8
    assert a[0]["label"].dtype == np.int32 and a[0]["index"].dtype == np.int32
    ids_a = np.concatenate([ids_of(x) for x in a])
    assert not np.array_equal(ids_a, np.concatenate([ids_of(x) for x in c]))
    e0, e1 = ids_a[:N_TRAIN], ids_a[N_TRAIN:]
    assert sorted(e0) == sorted(e1) == list(range(N_TRAIN))     # each epoch is a permutation
    assert not np.array_equal(e0, e1)                            # ... a different one each epoch
    np.testing.assert_array_equal(np.concatenate([x["label"] for x in a]), arrays["train"][1][ids_a])
    for x in a[:3]:                                              # the stored pixels, untouched
        np.testing.assert_array_equal(x["image"][..., 0], arrays["train"][0][ids_of(x)])
    np.testing.assert_array_equal(np.concatenate([x["index"] for x in a]), np.arange(16 * 8))


@pytest.mark.parametrize("process_count", [2, 3])
def test_train_loader_process_shards_and_positions(mnist_dir, pipeline, process_count):
    dd, _ = mnist_dir
    shards, b = [], 4
    share = N_TRAIN // process_count
    for p in range(process_count):
        it = D.make_train_loader(mnist_cfg(dd), batch_size=b, process_index=p, process_count=process_count)
        assert it.steps_per_epoch == share // b
        batches = take(it, it.steps_per_epoch + 2)
        ids = np.concatenate([ids_of(x) for x in batches[:it.steps_per_epoch]])
        assert len(set(ids)) == len(ids) == it.steps_per_epoch * b
        shards.append(set(ids))
        for step, x in enumerate(batches):          # rows of the global batch: process p holds [p*b, (p+1)*b)
            np.testing.assert_array_equal(x["index"], step * b * process_count + p * b + np.arange(b))
    for i in range(process_count):
        for j in range(i):
            assert not shards[i] & shards[j]
    if process_count == 2:
        assert set.union(*shards) == set(range(N_TRAIN))
    # the processes share each epoch's permutation and take consecutive slices of it
    its = [D.make_train_loader(mnist_cfg(dd), batch_size=b, process_index=p, process_count=process_count)
           for p in range(process_count)]
    whole = np.random.default_rng([1, 0, 1]).permutation(N_TRAIN)[:share * process_count]
    np.testing.assert_array_equal(np.concatenate([x.epoch_indices(1) for x in its]), whole)


@pytest.mark.parametrize("batch_size", [8, 24])
def test_train_loader_resume_exact(mnist_dir, pipeline, batch_size):
    dd, _ = mnist_dir
    cfg = mnist_cfg(dd)
    it = D.make_train_loader(cfg, batch_size=batch_size)
    take(it, 5)
    state = it.get_state()
    assert json.loads(state)["step"] == 5
    want = take(it, 6)                                     # crosses epoch boundaries
    it2 = D.make_train_loader(cfg, batch_size=batch_size)
    take(it2, 2)                                           # a prefetching loader, moved elsewhere first
    it2.set_state(state)
    got = take(it2, 6)
    for x, y in zip(want, got, strict=True):
        for k in ("image", "label", "index"):
            np.testing.assert_array_equal(x[k], y[k])
    if batch_size == 24:                                   # batches straddling epochs: each epoch complete
        ids = np.concatenate([ids_of(x) for x in take(D.make_train_loader(cfg, batch_size=24), 8)])
        for e in range(3):
            assert sorted(ids[e * N_TRAIN:(e + 1) * N_TRAIN]) == list(range(N_TRAIN))
    it.close(), it2.close()
    with pytest.raises(ValueError, match="batch_size"):
        D.make_train_loader(cfg, batch_size=batch_size + 4).set_state(state)
    with pytest.raises(ValueError, match="process_index"):
        D.make_train_loader(cfg, batch_size=batch_size, process_index=1, process_count=2).set_state(state)


def test_memory_and_stream_identical(mnist_dir, monkeypatch):
    dd, _ = mnist_dir
    cfg = mnist_cfg(dd)
    out = {}
    for p in PIPELINES:
        monkeypatch.setenv(S.IN_MEMORY_ENV, "0" if p == "stream" else str(2**30))
        it = D.make_train_loader(cfg, batch_size=8, process_index=1, process_count=2)
        ev = D.make_eval_loader(cfg, "test", batch_size=3, process_index=1, process_count=2)
        assert it.pipeline == ev.pipeline == p
        out[p] = (take(it, 10), list(ev), it.get_state())
    for x, y in zip(out["memory"][0] + out["memory"][1], out["stream"][0] + out["stream"][1], strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert out["memory"][2] == out["stream"][2]


def test_bad_image_reported_and_skipped(mnist_dir, pipeline, monkeypatch, caplog):
    dd, _ = mnist_dir
    cfg = mnist_cfg(dd)
    import tensorflow_datasets as tfds

    monkeypatch.setattr(S, "DISK_CACHE", False)                     # decode afresh (no cached split)
    monkeypatch.setattr(S, "_ARRAY_SPLITS", collections.OrderedDict())
    bad_id = {split: int(tfds.data_source("mnist", split=split, data_dir=str(dd))[7]["image"][0, 0, 0])
              for split in ("train", "test")}
    orig = S.RecordSource.record

    def corrupt(self, i):
        rec = orig(self, i)
        return dict(rec, image=b"not an image") if int(i) == 7 else rec

    monkeypatch.setattr(S.RecordSource, "record", corrupt)
    with caplog.at_level(logging.WARNING):
        it = D.make_train_loader(cfg, batch_size=9)
        batches = take(it, 14)                                      # 126 = two epochs of the 63 good ones
        ids = np.concatenate([ids_of(b) for b in batches])
        ev = list(D.make_eval_loader(cfg, "test", batch_size=4))
    assert it.num_examples == (N_TRAIN - 1 if pipeline == "memory" else N_TRAIN)
    assert bad_id["train"] not in ids
    assert sorted(ids[:63]) == sorted(set(range(N_TRAIN)) - {bad_id["train"]})
    assert caplog.text.count("train#7") == 1 and "test#7" in caplog.text        # reported once
    assert sum(b["mask"].sum() for b in ev) == N_TEST - 1
    assert all((b["image"][~b["mask"]] == 0).all() for b in ev)                 # masked slots are zeros
    assert all(b["index"].tolist() == list(range(9 * s, 9 * s + 9)) for s, b in enumerate(batches))


@pytest.mark.parametrize("process_count,batch_size", [(1, 4), (2, 4), (3, 2)])
def test_eval_loader_every_example_once(mnist_dir, pipeline, process_count, batch_size):
    dd, arrays = mnist_dir
    seen, nbatches = [], set()
    for p in range(process_count):
        ev = D.make_eval_loader(mnist_cfg(dd), "test", batch_size=batch_size, process_index=p,
                                process_count=process_count)
        assert ev.pipeline == pipeline
        batches = list(ev)
        nbatches.add(len(batches))
        assert len(batches) == len(ev)
        for b in batches:
            assert b["image"].shape == (batch_size, 28, 28, 1) and b["mask"].dtype == bool
            seen += list(ids_of(b)[b["mask"]])
            np.testing.assert_array_equal(b["label"][b["mask"]], arrays["test"][1][ids_of(b)[b["mask"]]])
            np.testing.assert_array_equal(b["image"][b["mask"], ..., 0], arrays["test"][0][ids_of(b)[b["mask"]]])
        assert [x.tolist() for x in ids_of(batches[0])] == [x.tolist() for x in ids_of(list(ev)[0])]
    assert len(nbatches) == 1                                 # same number of batches on every process
    assert sorted(seen) == list(range(N_TEST))


def test_array_split_disk_cache(mnist_dir, monkeypatch):
    dd, arrays = mnist_dir
    path = D.dataset_dir("mnist", str(dd))
    monkeypatch.setattr(S, "_ARRAY_SPLITS", collections.OrderedDict())
    a = D.load_array_split(path, "test")
    cached = path / "cache" / "test_28x28x1.npz"
    assert cached.is_file() and not list((path / "cache").glob("*.tmp"))
    assert a.images.shape == (N_TEST, 28, 28, 1) and a.valid.all()
    order = a.images[:, 0, 0, 0]
    np.testing.assert_array_equal(a.images[..., 0], arrays["test"][0][order])
    np.testing.assert_array_equal(a.labels, arrays["test"][1][order])
    assert D.load_array_split(path, "test") is a                       # kept in memory

    def no_decode(*args, **kw):
        raise AssertionError("decoded again")

    monkeypatch.setattr(S, "_ARRAY_SPLITS", collections.OrderedDict())
    monkeypatch.setattr(S, "decode_split", no_decode)
    b = D.load_array_split(path, "test")                               # from the .npz
    np.testing.assert_array_equal(b.images, a.images)
    monkeypatch.setattr(S, "_ARRAY_SPLITS", collections.OrderedDict())
    monkeypatch.setattr(S, "fingerprint", lambda p: "changed dataset")
    with pytest.raises(AssertionError, match="decoded again"):        # stale cache: decoded afresh
        D.load_array_split(path, "test")
    monkeypatch.setenv(S.IN_MEMORY_ENV, str(N_TEST * 28 * 28 - 1))     # one byte too many: streaming
    assert D.load_array_split(path, "test") is None


def test_stream_loader_threads_and_stores(inet_dir, monkeypatch):
    """ImageNet stores stream (forced): the same uint8 batches from every store's loader for the same
    seed (raw256 = originals exactly; jpeg256 close), with 1 or 3 reader threads."""
    monkeypatch.setenv(S.IN_MEMORY_ENV, "0")
    out = {}
    for name in ("imagenet2012", "imagenet2012/jpeg256", "imagenet2012/raw256"):
        for threads in (1, 3):
            cfg = Config(dataset=name, data_dir=str(inet_dir), augment="alexnet", input_size=224, seed=4,
                         num_workers=threads)
            it = D.make_train_loader(cfg, batch_size=4)
            assert it.pipeline == "stream"
            out[name, threads] = take(it, 3)
            it.close()
    for name in ("imagenet2012", "imagenet2012/jpeg256"):
        for x, y in zip(out[name, 1], out["imagenet2012/raw256", 3], strict=True):
            np.testing.assert_array_equal(x["label"], y["label"])
            d = np.abs(x["image"].astype(int) - y["image"])
            assert (d.max() == 0) if name == "imagenet2012" else d.mean() < 2.0
    for x, y in zip(out["imagenet2012/raw256", 1], out["imagenet2012/raw256", 3], strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
