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
from alexnet_jax.config import Config, ConfigError

A = importlib.import_module("alexnet_jax.data.augment")
F = importlib.import_module("alexnet_jax.data.files")
L = importlib.import_module("alexnet_jax.data.loader")
C = importlib.import_module("alexnet_jax.data.cache")
DS = importlib.import_module("alexnet_jax.data.datasets")
LS = importlib.import_module("alexnet_jax.data.listing")
PR = importlib.import_module("alexnet_jax.data.preparation")
R = importlib.import_module("alexnet_jax.data.records")
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
    for split, (im_f, lb_f) in LS.MNIST_FILES.items():
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


def _write_tree(root, files: dict):
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="session")
def cifar_tree(tmp_path_factory):
    """train/<class>/<nnnn>.jpg, 10 per class, plus one truncated JPEG train/cat/9999.jpg."""
    root = tmp_path_factory.mktemp("cifar_tree")
    rng = np.random.default_rng(1)
    files = {}
    for c in LS.CIFAR10_CLASSES:
        for i in range(10):
            files[f"train/{c}/{i:04d}.jpg"] = jpeg_bytes(smooth_image(rng, 32, 32))
    files["train/cat/9999.jpg"] = truncated_jpeg(rng)
    return _write_tree(root, files), files


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
    return _write_tree(root, files), files


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
        monkeypatch.setenv(C.IN_MEMORY_ENV, "0")
    else:
        monkeypatch.delenv(C.IN_MEMORY_ENV, raising=False)
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
        assert all(w in str(e.value) for w in ("raw999", "imagenet2012/raw256", "imagenet2012/jpeg256"))
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
            ours, theirs = R.parse_example(rec), parser.parse_example(rec)
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
    imgs = np.stack([LS.digits_to_28(im) for im in load_digits().images])
    assert (np.abs(imgs.astype(int) - ex["image"].astype(int)).reshape(len(imgs), -1).max(1) == 0).any()


def _split_ids(dd, name, split):
    import tensorflow_datasets as tfds

    return [R.to_str(ex["id"]) for ex in tfds.data_source(name, split=split, data_dir=str(dd))]


def test_cifar_tree_prepare_validation_and_corrupt(cifar_tree, cifar_dir, tmp_path):
    root, files = cifar_tree
    path = cifar_dir / "cifar10" / "3.0.2"
    report = json.loads((path / PR.REPORT_FILE).read_text())
    assert report["num_skipped"] == 1 and report["skipped"][0].endswith("train/cat/9999.jpg")
    train, val = _split_ids(cifar_dir, "cifar10", "train"), _split_ids(cifar_dir, "cifar10", "validation")
    by_class = {}
    for k in files:
        by_class.setdefault(k.split("/")[1], []).append(k)
    expected_val = LS.stratified_holdout(by_class) - {"train/cat/9999.jpg"}
    assert set(val) == expected_val and len(val) >= 9
    test = _split_ids(cifar_dir, "cifar10", "test")        # no test/ folder: carved from train as well
    assert not set(train) & set(val) and not (set(train) | set(val)) & set(test)
    assert len(train) + len(val) + len(test) == 100 and len(test) >= 9
    # same split from a .tar.gz of the same tree (streamed), and the original JPEG bytes are kept
    tgz = make_tar(tmp_path / "tree.tar.gz", {f"cifar/{k}": v for k, v in files.items()}, "w:gz")
    dd2 = tmp_path / "tfds"
    D.prepare("cifar10", str(tgz), str(dd2), workers=0)
    assert sorted(_split_ids(dd2, "cifar10", "validation")) == sorted(val)
    assert sorted(_split_ids(dd2, "cifar10", "train")) == sorted(train)
    assert sorted(_split_ids(dd2, "cifar10", "test")) == sorted(test)
    import tensorflow_datasets as tfds

    src = tfds.data_source("cifar10", split="validation", data_dir=str(dd2))
    ex = src[0]
    want = np.asarray(Image.open(io.BytesIO(files[R.to_str(ex["id"])])).convert("RGB"))
    np.testing.assert_array_equal(ex["image"], want)
    info = D.dataset_info(Config(dataset="cifar10", data_dir=str(dd2), input_size=32))
    assert info.class_names == LS.CIFAR10_CLASSES
    assert info.splits == {"train": len(train), "validation": len(val), "test": len(test)}


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
        i = int(R.to_str(ex["id"]).split("_")[1])
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
    synsets = DS.imagenet_synsets()
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

    synsets = DS.imagenet_synsets()
    labels_txt = Path(os.fspath(tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")))
    val_wnids = labels_txt.read_text().split()[:4]
    dd = str(tmp_path / "tfds")
    val = {R.to_str(ex["file_name"]): synsets[ex["label"]]
           for ex in tfds.data_source("imagenet2012", split="validation", data_dir=dd)}
    assert val == {f"ILSVRC2012_val_{i:08d}.JPEG": val_wnids[i - 1] for i in (1, 2, 3, 4)}
    src = tfds.data_source("imagenet2012", split="train", data_dir=dd)
    train = {R.to_str(ex["file_name"]): synsets[ex["label"]] for ex in src}
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
    from alexnet_jax.errors import Interrupted

    with pytest.raises(Interrupted, match=r"stopped by SIGINT \(Ctrl-C\): 2 of 6 shards are kept in .*; run the same "
                                          r"command again to resume") as stop:
        D.prepare("imagenet2012/jpeg256", root, dd, workers=0, shard_size=2)
    assert stop.value.exit_code == 130
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
    with pytest.raises(Interrupted, match="1 of 6 shards are kept"):
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
# prepare: what it refuses, what it reports, one prepare at a time, no temporary folders left
# ----------------------------------------------------------------------------------------------------
def cifar_source(root: Path, *, good: int = 3, bad: int = 0, odd: dict | None = None, seed: int = 7) -> Path:
    """A CIFAR-10 class tree: ``good`` 32x32 JPEGs and ``bad`` files named .jpg that are not images per
    class; ``odd``: {relative name: (h, w)} JPEGs of another size."""
    rng = np.random.default_rng(seed)
    files = {f"train/{c}/{i:04d}.jpg": jpeg_bytes(smooth_image(rng, 32, 32))
             for c in LS.CIFAR10_CLASSES for i in range(good)}
    files |= {f"train/{c}/bad{i}.jpg": b"not an image " + bytes([i]) for c in LS.CIFAR10_CLASSES for i in range(bad)}
    files |= {k: jpeg_bytes(smooth_image(rng, h, w)) for k, (h, w) in (odd or {}).items()}
    return _write_tree(root, files)


def looks_prepared(dd: Path) -> list[Path]:
    return sorted(p for p in dd.rglob("*") if p.name == "dataset_info.json" or p.name.endswith(".staging"))


def test_prepare_refuses_an_empty_or_mostly_unreadable_dataset(tmp_path, capsys):
    """30 files that are not images: refused, one error line naming the source and the split, nothing that
    looks prepared; more than half of a split unreadable: refused; a third: prepared, reported."""
    from alexnet_jax import cli
    from alexnet_jax.errors import AlexnetJaxError

    dd = tmp_path / "dd"
    junk = cifar_source(tmp_path / "junk", good=0, bad=3)
    assert cli.main(["prepare", "cifar10", "--source", str(junk), "--data-dir", str(dd), "--workers", "0"]) == 2
    out = capsys.readouterr().err
    err = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "Traceback" not in out, out
    assert err[0].startswith(f"error: cifar10 from {junk} ") and "'train' has no readable image" in err[0]
    assert not looks_prepared(dd), looks_prepared(dd)
    with pytest.raises(D.DatasetNotPreparedError):
        D.dataset_dir("cifar10", dd)
    mostly = cifar_source(tmp_path / "mostly", good=1, bad=2)             # 2 of 3 unreadable in every split
    with pytest.raises(AlexnetJaxError, match="unreadable"):
        D.prepare("cifar10", mostly, dd, workers=0)
    assert not looks_prepared(dd)
    third = cifar_source(tmp_path / "third", good=12, bad=6)             # a third unreadable: prepared
    path = D.prepare("cifar10", third, dd, workers=0)
    report = json.loads((path / PR.REPORT_FILE).read_text())
    assert report["num_skipped"] == 60 and sum(report["splits"].values()) == 120
    assert sum(report["unreadable_by_split"].values()) == 60


def test_prepare_reports_resized_images(tmp_path, caplog):
    """A 40x48 and a 64x40 image in a CIFAR-10 tree are fitted to 32x32 (shorter side, centre: a Pillow
    reference), counted in the log and listed in the report; TFDS reads every image as 32x32."""
    import tensorflow_datasets as tfds

    odd = {"train/cat/odd_a.jpg": (40, 48), "train/dog/odd_b.jpg": (64, 40)}
    src = cifar_source(tmp_path / "src", good=4, odd=odd)
    with caplog.at_level(logging.WARNING):
        path = D.prepare("cifar10", src, tmp_path / "dd", workers=0)
    report = json.loads((path / PR.REPORT_FILE).read_text())
    assert report["num_resized"] == 2 and sorted(Path(w).name for w in report["resized"]) == ["odd_a.jpg", "odd_b.jpg"]
    assert "2 image(s) were not 32x32 and were resized" in caplog.text
    got = {}
    for split in report["splits"]:
        for ex in tfds.data_source("cifar10", split=split, data_dir=str(tmp_path / "dd")):
            assert ex["image"].shape == (32, 32, 3)
            got[R.to_str(ex["id"])] = ex["image"]
    for name, (h, w) in odd.items():
        with Image.open(src / name) as im:                                  # shorter side -> 32, centre 32x32
            s = 32 / min(h, w)
            nw, nh = max(32, round(w * s)), max(32, round(h * s))
            ref = np.asarray(im.convert("RGB").resize((nw, nh), Image.BILINEAR))
        t, l = (nh - 32) // 2, (nw - 32) // 2
        np.testing.assert_array_equal(got[name], ref[t:t + 32, l:l + 32])


def test_a_dataset_that_failed_the_checks_is_rebuilt_and_named_by_the_loader(tmp_path, monkeypatch):
    """An empty dataset as earlier versions wrote it (the checks off): training on it names its folder and
    the fix; a later prepare from a good source rebuilds it instead of saying "already prepared"."""
    dd = tmp_path / "dd"
    with monkeypatch.context() as m:
        m.setattr(PR, "_problems", lambda *a: [], raising=False)
        empty = D.prepare("cifar10", cifar_source(tmp_path / "junk", good=0, bad=3), dd, workers=0)
    assert D.dataset_info(Config(dataset="cifar10", data_dir=str(dd))).splits["train"] == 0
    with pytest.raises(ConfigError) as e:
        D.make_train_loader(Config(dataset="cifar10", data_dir=str(dd), augment="cifar", input_size=32), batch_size=4)
    msg = str(e.value)
    assert str(empty) in msg and "no usable images" in msg
    assert f"alexnet-jax prepare cifar10 --source PATH --data-dir {dd.resolve()} --overwrite" in msg
    path = D.prepare("cifar10", cifar_source(tmp_path / "good", good=10), dd, workers=0)
    assert path == empty and D.dataset_info(Config(dataset="cifar10", data_dir=str(dd))).splits == {
        "train": 80, "validation": 10, "test": 10}


def test_overwrite_rebuilds_a_good_dataset(tmp_path, capsys):
    from alexnet_jax import cli

    dd = tmp_path / "dd"
    first, second = cifar_source(tmp_path / "a", good=2, seed=1), cifar_source(tmp_path / "b", good=3, seed=2)
    base = ["prepare", "cifar10", "--data-dir", str(dd), "--workers", "0", "--source"]
    assert cli.main([*base, str(first)]) == 0
    assert cli.main([*base, str(second)]) == 0                          # already prepared: kept
    assert sum(D.dataset_info(Config(dataset="cifar10", data_dir=str(dd))).splits.values()) == 20
    assert cli.main([*base, str(second), "--overwrite"]) == 0
    assert sum(D.dataset_info(Config(dataset="cifar10", data_dir=str(dd))).splits.values()) == 30
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["path"] for o in out] == [str(dd.resolve() / "cifar10" / "3.0.2")] * 3


def test_second_concurrent_prepare_is_one_error_line_naming_the_holder(tmp_path, monkeypatch, capsys):
    """While one prepare writes its shards, a second of the same dataset exits 2 with one line naming the
    holder's pid and the lock; the first then finishes."""
    import threading

    from alexnet_jax import cli

    src, dd = cifar_source(tmp_path / "src", good=2), tmp_path / "dd"
    writing, release = threading.Event(), threading.Event()
    real = PR.write_shard

    def slow(task):
        writing.set()
        assert release.wait(60)
        return real(task)

    monkeypatch.setattr(PR, "write_shard", slow)
    result = {}
    first = threading.Thread(target=lambda: result.update(path=D.prepare("cifar10", src, dd, workers=0)))
    first.start()
    try:
        assert writing.wait(60)
        rc = cli.main(["prepare", "cifar10", "--source", str(src), "--data-dir", str(dd)])
    finally:
        release.set()
        first.join(60)
    out = capsys.readouterr().err
    err = [line for line in out.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(err) == 1 and "Traceback" not in out, out
    staging = dd.resolve() / "cifar10" / ("3.0.2" + PR.STAGING_SUFFIX)
    assert err[0].startswith("error: another prepare of cifar10 (pid ") and f"pid {os.getpid()} on host" in err[0]
    assert str(staging / ".lock") in err[0] and "wait for it to finish" in err[0]
    assert result["path"] == dd.resolve() / "cifar10" / "3.0.2" and not staging.exists()


def test_prepare_leaves_no_tmp_tfds_folders(tmp_path, monkeypatch):
    """TFDS' bucket lookup made one empty tmp*tfds folder per prepare in the temp dir; none now."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    before = sorted((tmp_path / "tmp").glob("tmp*tfds"))
    D.prepare("cifar10", cifar_source(tmp_path / "src", good=2), tmp_path / "dd", workers=0)
    D.prepare("imagenet2012/raw256", _write_tree(tmp_path / "inet", {
        "train/n01440764/a.JPEG": jpeg_bytes(smooth_image(np.random.default_rng(0), 20, 30)),
        "train/n01440764/b.JPEG": jpeg_bytes(smooth_image(np.random.default_rng(1), 30, 20))}), tmp_path / "dd",
        workers=0)
    assert sorted((tmp_path / "tmp").glob("tmp*tfds")) == before == []


def test_clear_cache_deletes_the_decoded_arrays(mnist_dir, tmp_path, capsys):
    from alexnet_jax import cli

    dd, _ = mnist_dir
    path = D.dataset_dir("mnist", dd)
    D.load_array_split(path, "test")
    D.mean_image(path, "test")
    cached = [p for p in path.rglob("*") if p.is_file() and ("cache" in p.parts or p.name.startswith("mean_"))]
    assert len(cached) == 2
    size = sum(p.stat().st_size for p in cached)
    assert cli.main(["prepare", "mnist", "--clear-cache", "--data-dir", str(dd)]) == 0
    assert json.loads(capsys.readouterr().out) == {"dataset": "mnist", "path": str(path), "cleared_bytes": size}
    assert not any(p.exists() for p in cached) and (path / "dataset_info.json").is_file()
    assert D.load_array_split(path, "test").images.shape == (N_TEST, 28, 28, 1)         # rebuilt on use


def test_locate_once_and_pass_it_on(mnist_dir, monkeypatch):
    """``locate(config)`` finds the dataset once; loaders and make_augment given ``dataset=`` locate nothing
    and deliver what the config-only calls deliver."""
    dd, _ = mnist_dir
    cfg = mnist_cfg(dd)
    ds = D.locate(cfg)
    assert (ds.name, ds.path, ds.num_classes, ds.stored_shape, ds.image_shape) == (
        "mnist", D.dataset_dir("mnist", dd), 10, (28, 28, 1), (28, 28, 1))
    assert ds.splits == {"train": N_TRAIN, "test": N_TEST}
    want = (take(D.make_train_loader(cfg, batch_size=8), 3), list(D.make_eval_loader(cfg, "test", batch_size=4)),
            D.make_augment(cfg))

    def no_locating(*a, **k):
        raise AssertionError("located again")

    for mod in ("loader", "augment", "preparation"):
        monkeypatch.setattr(importlib.import_module(f"alexnet_jax.data.{mod}"), "locate", no_locating)
    got = (take(D.make_train_loader(cfg, batch_size=8, dataset=ds), 3),
           list(D.make_eval_loader(cfg, "test", batch_size=4, dataset=ds)), D.make_augment(cfg, dataset=ds))
    for x, y in zip(want[0] + want[1], got[0] + got[1], strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert (got[2].kind, got[2].stored_shape, got[2].mean) == (want[2].kind, want[2].stored_shape, want[2].mean)


def test_tools_read_a_split_through_the_one_reader(mnist_dir, monkeypatch, caplog):
    """The tools' dataset inputs skip an undecodable image (reported once by name) instead of failing."""
    import types

    from alexnet_jax.tools import _images

    dd, arrays = mnist_dir
    bad = int(_images.pick_from_split(S.RecordSource(D.dataset_dir("mnist", dd), "test"), 6)[0][2])
    orig = S.RecordSource.record
    monkeypatch.setattr(S.RecordSource, "record",
                        lambda self, i: dict(orig(self, i), image=b"not an image") if int(i) == bad else orig(self, i))
    restored = types.SimpleNamespace(config=mnist_cfg(dd, eval_split="test"),
                                     trainer=types.SimpleNamespace(augment=A.Augment("none", 28, (28, 28, 1))))
    with caplog.at_level(logging.WARNING):
        inputs = _images.load_inputs(restored, limit=6)
    assert len(inputs.names) == len(inputs.labels) == len(inputs.x) == 5 and f"test#{bad}" not in inputs.names
    assert caplog.text.count(f"test#{bad}") == 1
    ids = [int(d[0, 0, 0]) for d in inputs.display]
    np.testing.assert_array_equal(np.stack(inputs.display)[..., 0], arrays["test"][0][ids])
    assert inputs.labels == arrays["test"][1][ids].tolist()


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
        monkeypatch.setenv(C.IN_MEMORY_ENV, "0" if p == "stream" else str(2**30))
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

    monkeypatch.setattr(C, "DISK_CACHE", False)                     # decode afresh (no cached split)
    monkeypatch.setattr(C, "_ARRAY_SPLITS", collections.OrderedDict())
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
    monkeypatch.setattr(C, "_ARRAY_SPLITS", collections.OrderedDict())
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

    monkeypatch.setattr(C, "_ARRAY_SPLITS", collections.OrderedDict())
    monkeypatch.setattr(C, "decode_split", no_decode)
    b = D.load_array_split(path, "test")                               # from the .npz
    np.testing.assert_array_equal(b.images, a.images)
    monkeypatch.setattr(C, "_ARRAY_SPLITS", collections.OrderedDict())
    monkeypatch.setattr(C, "dataset_fingerprint", lambda p: "changed dataset")
    with pytest.raises(AssertionError, match="decoded again"):        # stale cache: decoded afresh
        D.load_array_split(path, "test")
    monkeypatch.setenv(C.IN_MEMORY_ENV, str(N_TEST * 28 * 28 - 1))     # one byte too many: streaming
    assert D.load_array_split(path, "test") is None


def test_stream_loader_threads_and_stores(inet_dir, monkeypatch):
    """ImageNet stores stream (forced): the same uint8 batches from every store's loader for the same
    seed (raw256 = originals exactly; jpeg256 close), with 1 or 3 reader threads."""
    monkeypatch.setenv(C.IN_MEMORY_ENV, "0")
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


# ----------------------------------------------------------------------------------------------------
# device augmentation: independent numpy references of the papers' formulas
# ----------------------------------------------------------------------------------------------------
def np_draw(rng, kind: str, n: int, span: int, std: float = 0.1) -> dict[str, np.ndarray]:
    """Host reference draws (K12 §4.1, LC98 §III): offsets uniform over 0..span, flip p=0.5, alpha
    ~ N(0, std^2); affine: scales U(0.85, 1.15) per axis, shear U(-0.3, 0.3), shifts U(-2, 2)."""
    if kind == "lenet_affine":
        return {"affine": np.column_stack([rng.uniform(0.85, 1.15, (n, 2)), rng.uniform(-0.3, 0.3, n),
                                           rng.uniform(-2, 2, (n, 2))])}
    return {"top": rng.integers(0, span + 1, n), "left": rng.integers(0, span + 1, n), "flip": rng.random(n) < 0.5,
            "alpha": rng.normal(0, std, (n, 3))}


def np_lighting(alpha: np.ndarray) -> np.ndarray:
    """K12 §4.1: add [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T (fb.resnet pairs, [0, 1] scale) in 0..255 units."""
    return 255.0 * (EIGVEC @ (alpha * EIGVAL).T).T


def np_alexnet_train(img_u8, mean, params, s):
    out = []
    for i, x in enumerate(np.asarray(img_u8, np.float64) - mean):
        t, l = int(params["top"][i]), int(params["left"][i])
        v = x[t:t + s, l:l + s]
        v = v[:, ::-1] if params["flip"][i] else v
        out.append(v + np_lighting(np.asarray(params["alpha"][i], np.float64)))
    return np.stack(out)


def device_draw(aug, n, seed=0, offset=0):
    p = jax.jit(aug.draw)(jnp.arange(offset, offset + n, dtype=jnp.int32), jax.random.key(seed))
    return {k: np.asarray(v) for k, v in p.items()}


def device_draw_at(aug, positions, seed):
    p = jax.jit(aug.draw)(jnp.asarray(positions, jnp.int32), jax.random.key(seed))
    return {k: np.asarray(v) for k, v in p.items()}


def _coord_image(n=256) -> np.ndarray:
    r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.stack([r, c, np.zeros_like(r)], -1).astype(np.uint8)


@pytest.mark.parametrize("kind,input_size,span", [("alexnet", 32, 32), ("alexnet", 35, 29), ("cifar", 32, 8)])
def test_crop_offsets_uniform_and_flip_rate(kind, input_size, span):
    """Pixels hold their (row, col) coordinates, so each output reveals its crop offset and flip.  The
    alexnet crops come from 64x64 stored images here (the same spans as 224 / 227 from 256; the 256 case
    itself: test_alexnet_train_matches_numpy_reference)."""
    n = 3000
    if kind == "alexnet":
        img, shift = _coord_image(64), 0
        aug = A.Augment("alexnet", input_size, (64, 64, 3), None, lighting_std=0.0)
    else:   # 32x32 zero-padded by 4; coordinates + 1 so that the padding (0) is distinct
        img, shift = _coord_image()[:32, :32] + np.array([1, 1, 0], np.uint8), 1 - 4
        aug = A.Augment("cifar", input_size, (32, 32, 3), np.zeros(3, np.float32))
    train = jax.jit(aug.train)
    tops, lefts, flips = [], [], []
    for start in range(0, n, 500):
        x = np.rint(np.asarray(train(jnp.asarray(np.repeat(img[None], 500, 0)),
                                     jnp.arange(start, start + 500, dtype=jnp.int32), jax.random.key(6)))).astype(int)
        flipped = x[:, 16, 15, 1] > x[:, 16, 17, 1]
        x = np.where(flipped[:, None, None, None], x[:, :, ::-1], x)
        tops.append(x[:, 16, 16, 0] - 16 - shift), lefts.append(x[:, 16, 16, 1] - 16 - shift), flips.append(flipped)
    for o in (np.concatenate(tops), np.concatenate(lefts)):
        assert o.min() == 0 and o.max() == span
        counts = np.bincount(o, minlength=span + 1)
        expected = n / (span + 1)
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < span + 6 * np.sqrt(2 * span)          # ~uniform (chi-square, span dof, ~6 sigma)
    assert abs(np.mean(np.concatenate(flips)) - 0.5) < 0.04


def test_lighting_noise_covariance():
    n = 6000
    aug = A.Augment("alexnet", 8, (256, 256, 3), np.full((256, 256, 3), 128, np.float32))
    img = jnp.full((n, 256, 256, 3), 128, jnp.uint8)
    x = np.asarray(jax.jit(aug.train)(img, jnp.arange(n, dtype=jnp.int32), jax.random.key(7)), np.float64)
    np.testing.assert_allclose(x, np.broadcast_to(x[:, :1, :1], x.shape), atol=1e-4)   # constant per image
    offsets = x[:, 0, 0]
    analytic = 255.0**2 * EIGVEC @ np.diag((0.1 * EIGVAL) ** 2) @ EIGVEC.T
    emp = np.cov(offsets.T)
    assert np.abs(offsets.mean(0)).max() < 0.1 * np.sqrt(analytic.diagonal().max())
    assert np.linalg.norm(emp - analytic) / np.linalg.norm(analytic) < 0.08
    coord_var = np.var(offsets @ np.linalg.inv(EIGVEC).T, axis=0)       # each eigen-direction separately
    np.testing.assert_allclose(coord_var, (255 * 0.1 * EIGVAL) ** 2, rtol=0.1)


def test_affine_parameter_ranges():
    aug = A.Augment("lenet_affine", 32, (28, 28, 1))
    p = device_draw(aug, 8000, seed=3)["affine"]
    lo, hi = np.array([0.85, 0.85, -0.3, -2, -2]), np.array([1.15, 1.15, 0.3, 2, 2])
    assert (p >= lo).all() and (p <= hi).all()
    width = hi - lo
    assert (np.abs(p.min(0) - lo) < 0.01 * width).all() and (np.abs(p.max(0) - hi) < 0.01 * width).all()
    assert (np.abs(p.mean(0) - (lo + hi) / 2) < 0.02 * width).all()
    np.testing.assert_allclose(p.var(0), width**2 / 12, rtol=0.06)          # uniform's variance
    assert np.abs(np.corrcoef(p.T) - np.eye(5)).max() < 0.05                 # independent parameters


def test_host_and_device_draws_same_distributions():
    """The device draws and the small numpy reference (np_draw) come from the same distributions
    (two-sample Kolmogorov-Smirnov on each parameter, for crops/flips/lighting and the affine one)."""
    from scipy import stats

    n = 4000
    rng = np.random.default_rng(11)
    dev = device_draw(A.Augment("alexnet", 224, (256, 256, 3)), n, seed=5)
    host = np_draw(rng, "alexnet", n, 32)
    for k in ("top", "left", "flip"):
        assert stats.ks_2samp(dev[k].astype(float), host[k].astype(float)).pvalue > 1e-3, k
    for j in range(3):
        assert stats.ks_2samp(dev["alpha"][:, j], host["alpha"][:, j]).pvalue > 1e-3
    lit_dev, lit_host = np_lighting(dev["alpha"].astype(np.float64)), np_lighting(host["alpha"])
    for j in range(3):
        assert stats.ks_2samp(lit_dev[:, j], lit_host[:, j]).pvalue > 1e-3
    dev_a = device_draw(A.Augment("lenet_affine", 32, (28, 28, 1)), n, seed=5)["affine"]
    host_a = np_draw(rng, "lenet_affine", n, 0)["affine"]
    for j in range(5):
        assert stats.ks_2samp(dev_a[:, j], host_a[:, j]).pvalue > 1e-3
    # a wrong distribution is told apart: offsets over 0..31 instead of 0..32
    assert stats.ks_2samp(dev["top"].astype(float), rng.integers(0, 32, n).astype(float) * 0.9).pvalue < 1e-3


@pytest.mark.parametrize("input_size", [224, 227])
def test_alexnet_train_matches_numpy_reference(input_size):
    """Mean subtracted at the crop's offset, crop, flip, lighting: the device output = the numpy formula
    with the device's own draws."""
    rng = np.random.default_rng(12)
    mean = rng.uniform(0, 255, (256, 256, 3)).astype(np.float32)
    aug = A.Augment("alexnet", input_size, (256, 256, 3), mean)
    imgs = rng.integers(0, 256, (6, 256, 256, 3), dtype=np.uint8)
    pos = np.array([5, 900, 3, 77, 12345, 0], np.int32)
    out = np.asarray(jax.jit(aug.train)(jnp.asarray(imgs), jnp.asarray(pos), jax.random.key(1)))
    params = device_draw_at(aug, pos, 1)
    assert params["flip"].any() and not params["flip"].all()
    many = device_draw(aug, 3000, seed=1)
    assert many["top"].min() == many["left"].min() == 0
    assert many["top"].max() == many["left"].max() == 256 - input_size
    np.testing.assert_allclose(out, np_alexnet_train(imgs, mean, params, input_size), atol=2e-3)
    # a zero image shows -mean at the crop's offset (the mean is cropped with the image)
    zero = np.asarray(jax.jit(A.Augment("alexnet", input_size, (256, 256, 3), mean, lighting_std=0.0).train)(
        jnp.zeros((6, 256, 256, 3), jnp.uint8), jnp.asarray(pos), jax.random.key(1)))
    for i in range(6):
        t, l = params["top"][i], params["left"][i]
        want = -mean[t:t + input_size, l:l + input_size]
        np.testing.assert_allclose(zero[i], want[:, ::-1] if params["flip"][i] else want, atol=1e-4)


def test_cifar_train_and_eval_match_numpy_reference():
    rng = np.random.default_rng(13)
    mean = rng.uniform(0, 255, (32, 32, 3)).astype(np.float32)
    imgs = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    for s in (32, 24):
        aug = A.Augment("cifar", s, (32, 32, 3), mean)
        pos = jnp.arange(8, dtype=jnp.int32) * 3
        out = np.asarray(jax.jit(aug.train)(jnp.asarray(imgs), pos, jax.random.key(2)))
        p = device_draw_at(aug, pos, 2)
        for i in range(8):
            x = np.pad(imgs[i].astype(np.float64) - mean, ((4, 4), (4, 4), (0, 0)))
            v = x[p["top"][i]:p["top"][i] + s, p["left"][i]:p["left"][i] + s]
            np.testing.assert_allclose(out[i], v[:, ::-1] if p["flip"][i] else v, atol=1e-4)
        ev = np.asarray(aug.eval(jnp.asarray(imgs)))
        c = (32 - s) // 2
        np.testing.assert_allclose(ev, (imgs.astype(np.float64) - mean)[:, c:c + s, c:c + s], atol=1e-4)
    big = A.Augment("cifar", 40, (32, 32, 3), A.channel_mean(3))       # base 40: resized, channel mean
    assert big.base_shape == (40, 40) and big.crop_span == (8, 8)
    e = np.asarray(big.eval(jnp.asarray(imgs)))
    assert e.shape == (8, 40, 40, 3) and abs(e.mean() - (imgs.mean() - np.mean(A.CIFAR_CHANNEL_MEAN))) < 2


def test_ten_crop_order_and_content():
    rng = np.random.default_rng(5)
    mean = rng.uniform(0, 255, (256, 256, 3)).astype(np.float32)
    imgs = rng.integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    aug = A.Augment("alexnet", 224, (256, 256, 3), mean)
    views = np.asarray(jax.jit(lambda x: aug.eval(x, ten_crop=True))(jnp.asarray(imgs)))
    x, s = imgs.astype(np.float64) - mean, 224
    expect = [x[:, :s, :s], x[:, :s, -s:], x[:, -s:, :s], x[:, -s:, -s:], x[:, 16:16 + s, 16:16 + s]]
    expect += [v[:, :, ::-1] for v in expect]                     # TL TR BL BR C, then their mirrors
    assert views.shape == (2, 10, 224, 224, 3) and aug.output_shape(True) == (10, 224, 224, 3)
    for k, e in enumerate(expect):
        np.testing.assert_allclose(views[:, k], e, atol=1e-3)
    np.testing.assert_allclose(np.asarray(aug.eval(jnp.asarray(imgs))), expect[4], atol=1e-3)


def test_draws_depend_only_on_key_and_position():
    """Same (key, position) -> same image, whether in a batch of 8 or a shard of 4 in another order;
    other positions or keys -> other draws."""
    rng = np.random.default_rng(9)
    imgs = rng.integers(0, 256, (8, 256, 256, 3), dtype=np.uint8)
    pos = np.arange(100, 108, dtype=np.int32)
    aug = A.Augment("alexnet", 224, (256, 256, 3), rng.uniform(0, 255, (256, 256, 3)).astype(np.float32))
    train = jax.jit(aug.train)
    full = np.asarray(train(jnp.asarray(imgs), jnp.asarray(pos), jax.random.key(3)))
    shard = [5, 2, 7, 0]
    part = np.asarray(train(jnp.asarray(imgs[shard]), jnp.asarray(pos[shard]), jax.random.key(3)))
    np.testing.assert_allclose(part, full[shard], atol=1e-5)      # XLA may round differently per batch size
    d_full, d_part = (device_draw_at(aug, p, 3) for p in (pos, pos[shard]))
    for k in d_full:
        np.testing.assert_array_equal(d_part[k], d_full[k][shard])   # the draws themselves: identical
    other_pos = np.asarray(train(jnp.asarray(imgs), jnp.asarray(pos + 8), jax.random.key(3)))
    other_key = np.asarray(train(jnp.asarray(imgs), jnp.asarray(pos), jax.random.key(4)))
    for o in (other_pos, other_key):
        assert all(not np.allclose(o[i], full[i]) for i in range(8))
    aff = A.Augment("lenet_affine", 32, (28, 28, 1))
    d8 = device_draw(aff, 8, seed=1, offset=40)["affine"]
    d4 = device_draw(aff, 4, seed=1, offset=44)["affine"]
    np.testing.assert_array_equal(d8[4:], d4)


def test_lenet_scaling_padding_and_affine_warp():
    from scipy import ndimage

    img = np.zeros((3, 28, 28, 1), np.uint8)
    img[:, :, 14:] = 255
    aug = A.Augment("lenet", 32, (28, 28, 1))
    x = np.asarray(aug.eval(jnp.asarray(img)))[0]
    assert x.shape == (32, 32, 1)
    np.testing.assert_allclose(x[2:30, 2:16], -0.1, atol=1e-6)
    np.testing.assert_allclose(x[2:30, 16:30], 1.175, atol=1e-6)
    border = np.concatenate([x[:2].ravel(), x[30:].ravel(), x[:, :2].ravel(), x[:, 30:].ravel()])
    np.testing.assert_allclose(border, -0.1, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(aug.train(jnp.asarray(img), jnp.arange(3), jax.random.key(0)))[0], x)
    assert A.Augment("lenet", 28, (28, 28, 1)).eval(jnp.asarray(img)).shape == (3, 28, 28, 1)
    # lenet_affine = lenet of the warped digit; the warp = scipy.ndimage.affine_transform(order=1, constant)
    rng = np.random.default_rng(8)
    digits = rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8)
    aff = A.Augment("lenet_affine", 32, (28, 28, 1))
    pos = jnp.arange(16, dtype=jnp.int32)
    out = np.asarray(jax.jit(aff.train)(jnp.asarray(digits), pos, jax.random.key(2)))
    params = device_draw_at(aff, pos, 2)["affine"].astype(np.float64)
    padded = np.pad(digits[..., 0].astype(np.float64), ((0, 0), (2, 2), (2, 2)))
    for i in range(16):
        sy, sx, sh, ty, tx = params[i]
        inv = np.linalg.inv(np.array([[sy, 0.0], [sh, sx]]))
        ctr = np.array([15.5, 15.5])
        off = ctr - inv @ (ctr + np.array([ty, tx]))
        want = ndimage.affine_transform(padded[i], inv, offset=off, order=1, mode="constant", cval=0.0)
        np.testing.assert_allclose(out[i, ..., 0], want * 1.275 / 255 - 0.1, atol=2e-4)
    np.testing.assert_array_equal(np.asarray(aff.eval(jnp.asarray(digits))), np.asarray(
        A.Augment("lenet", 32, (28, 28, 1)).eval(jnp.asarray(digits))))


def test_none_fits_to_input_size():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    x = np.asarray(A.Augment("none", 32, (28, 28, 1)).eval(jnp.asarray(imgs)))
    np.testing.assert_allclose(x[:, 2:30, 2:30], imgs / 255.0, atol=1e-6)
    assert (x[:, :2] == 0).all()
    np.testing.assert_allclose(np.asarray(A.Augment("none", 28, (28, 28, 1)).eval(jnp.asarray(imgs))),
                               imgs / 255.0, atol=1e-6)
    big = np.asarray(A.Augment("none", 16, (32, 32, 3)).eval(jnp.asarray(rng.integers(0, 256, (1, 32, 32, 3)))))
    assert big.shape == (1, 16, 16, 3) and 0 <= big.min() and big.max() <= 1


def test_augment_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="256x256 store"):
        A.Augment("alexnet", 224, (32, 32, 3))
    with pytest.raises(ValueError, match="mean of shape"):
        A.Augment("alexnet", 224, (256, 256, 3), np.zeros((224, 224, 3)))
    with pytest.raises(ValueError, match="unknown augment"):
        A.Augment("fancy", 224, (256, 256, 3))
    with pytest.raises(ValueError, match="expects uint8 images of shape"):
        A.Augment("alexnet", 224, (256, 256, 3)).eval(jnp.zeros((1, 250, 256, 3), jnp.uint8))


def test_make_augment_mean_images(cifar_dir, digits_dir, inet_dir):
    import tensorflow_datasets as tfds

    cfg = Config(dataset="cifar10", data_dir=str(cifar_dir), augment="cifar", input_size=32)
    aug = D.make_augment(cfg)
    imgs = np.stack([ex["image"] for ex in tfds.data_source("cifar10", split="train", data_dir=str(cifar_dir))])
    np.testing.assert_allclose(aug.mean, imgs.astype(np.float64).mean(0), atol=1e-3)
    assert (cifar_dir / "cifar10" / "3.0.2" / "mean_train_32x32x3.npy").is_file()
    assert aug.stored_shape == (32, 32, 3)
    np.testing.assert_allclose(D.make_augment(cfg.replace(input_size=24)).mean, aug.mean)   # base 32 still
    np.testing.assert_allclose(D.make_augment(cfg.replace(input_size=40)).mean, A.CIFAR_CHANNEL_MEAN)
    lenet = D.make_augment(Config(dataset="digits", data_dir=str(digits_dir), augment="lenet_affine"))
    assert lenet.mean is None and lenet.stored_shape == (28, 28, 1)
    icfg = Config(dataset="imagenet2012/raw256", data_dir=str(inet_dir), augment="alexnet", input_size=224)
    ia = D.make_augment(icfg)
    src = S.RecordSource(D.dataset_dir(icfg.dataset, icfg.data_dir), "train")
    ref = np.mean([src.decode(src.record(i)).astype(np.float64) for i in range(len(src))], axis=0)
    np.testing.assert_allclose(ia.mean, ref, atol=1e-3)
    assert D.make_augment(icfg, mean=None).mean is None


def test_loader_then_augment_end_to_end(inet_dir, digits_dir):
    cfg = Config(dataset="imagenet2012/raw256", data_dir=str(inet_dir), augment="alexnet", input_size=224,
                 seed=2)
    aug = D.make_augment(cfg)
    b = next(D.make_train_loader(cfg, batch_size=4))
    x = jax.jit(aug.train)(jnp.asarray(b["image"]), jnp.asarray(b["index"]), jax.random.key(cfg.seed))
    assert x.shape == (4, 224, 224, 3) and x.dtype == jnp.float32 and abs(float(x.mean())) < 40
    ev = next(iter(D.make_eval_loader(cfg, "validation", batch_size=4)))
    ten = jax.jit(lambda u: aug.eval(u, ten_crop=True))(jnp.asarray(ev["image"]))
    assert ten.shape == (4, 10, 224, 224, 3)
    dcfg = Config(dataset="digits", data_dir=str(digits_dir), augment="lenet", input_size=32)
    e = next(iter(D.make_eval_loader(dcfg, "test", batch_size=360)))
    y = np.asarray(D.make_augment(dcfg).eval(jnp.asarray(e["image"])))
    assert e["mask"].all() and np.isclose(y.min(), -0.1) and y.max() > 1.0


# ----------------------------------------------------------------------------------------------------
# the real data in ../shared/data (skipped when absent)
# ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_shared_mnist(tmp_path):
    src = SHARED / "mnist"
    if not (src / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"shared MNIST not found at {src}")
    path = D.prepare("mnist", str(src), str(tmp_path))
    info = D.dataset_info(Config(dataset="mnist", data_dir=str(tmp_path)))
    assert info.splits == {"train": 60000, "test": 10000}
    x = D.read_idx(src / "t10k-images-idx3-ubyte.gz")
    y = D.read_idx(src / "t10k-labels-idx1-ubyte.gz")
    ev = D.make_eval_loader(Config(dataset="mnist", data_dir=str(tmp_path)), "test", batch_size=1000)
    got = np.concatenate([b["image"][..., 0] for b in ev])
    lab = np.concatenate([b["label"] for b in ev])
    np.testing.assert_array_equal(got, x)                           # key order = the file's order
    np.testing.assert_array_equal(lab, y)
    assert path.name == "3.0.1"


@pytest.mark.slow
def test_shared_cifar10(tmp_path):
    src = SHARED / "cifar10" / "cifar10_train_jpeg.tar.gz"
    if not src.is_file():
        pytest.skip(f"shared CIFAR-10 not found at {src}")
    path = D.prepare("cifar10", str(src), str(tmp_path))
    info = D.dataset_info(Config(dataset="cifar10", data_dir=str(tmp_path), eval_split="validation"))
    # the 50,000 shared images: three disjoint class-balanced splits (no test split in the source)
    assert info.splits == {"train": 40000, "validation": 5000, "test": 5000}
    assert json.loads((path / PR.REPORT_FILE).read_text())["num_skipped"] == 0
    cfg = Config(dataset="cifar10", data_dir=str(tmp_path), augment="cifar", input_size=32)
    names = {}
    for split in ("validation", "test"):
        ev = list(D.make_eval_loader(cfg, split, batch_size=1000))
        labels = np.concatenate([b["label"] for b in ev])
        assert np.all(np.bincount(labels, minlength=10) == 500), split
        src = D.RecordSource(path, split)
        names[split] = {src.record(i)["name"] for i in range(len(src))}
    train = D.RecordSource(path, "train")
    train_names = {train.record(i)["name"] for i in range(0, len(train), 7)}
    assert not names["validation"] & names["test"] and not (names["validation"] | names["test"]) & train_names
    b = next(D.make_train_loader(cfg, batch_size=64))
    assert b["image"].shape == (64, 32, 32, 3) and b["image"].dtype == np.uint8


def test_shared_imagenet_samples_decode(tmp_path):
    """The 100 real photos: decode_images = the Pillow reference of K12 §2 (the DCT-reduced decode is
    used only where the photo is at least twice the size, and is then close)."""
    if not SAMPLES.is_file():
        pytest.skip(f"shared ImageNet samples not found at {SAMPLES}")
    items = D.read_image_files(SAMPLES)
    assert len(items) == 100 and all("_" in n for n, _ in items)
    x = D.decode_images("alexnet", [d for _, d in items])
    assert x.shape == (100, 256, 256, 3)
    for (name, data), got in zip(items[:30], x[:30], strict=True):
        w, h = F.image_size(data)
        err = np.abs(got.astype(int) - ref_store256(data))
        if min(w, h) < 512:
            assert err.max() == 0, name
        else:
            assert err.mean() < 2.0, name
