"""alexnet_jax.data: offline TFDS preparation (array_record, no TF) and the grain input pipeline."""

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

import numpy as np
import pytest
from PIL import Image

from alexnet_jax import data as D
from alexnet_jax.config import Config

P = importlib.import_module("alexnet_jax.data.pipeline")
PR = importlib.import_module("alexnet_jax.data.prepare")   # the package attribute `prepare` is the function

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
N_TRAIN, N_TEST = 64, 10


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


def ids_of(batch) -> np.ndarray:
    """Example ids of a tiny-MNIST batch under augment=none (pixel (0, 0) * 255)."""
    return np.rint(batch["image"][:, 0, 0, 0] * 255).astype(int)


# ----------------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    """A tiny MNIST prepared from IDX .gz files: returns (data_dir, arrays)."""
    src = tmp_path_factory.mktemp("mnist_src")
    arrays = tiny_mnist_arrays()
    for split, (im_f, lb_f) in PR.Mnist.FILES.items():
        write_idx_gz(src / im_f, arrays[split][0])
        write_idx_gz(src / lb_f, arrays[split][1])
    dd = tmp_path_factory.mktemp("tfds_mnist")
    path = D.prepare("mnist", str(src), str(dd))
    assert path == dd / "mnist" / "3.0.1"
    return dd, arrays


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    dd = tmp_path_factory.mktemp("tfds_digits")
    D.ensure_prepared(Config(dataset="digits", data_dir=str(dd)))   # prepared on first use
    return dd


def mnist_cfg(dd, **kw) -> Config:
    base = dict(dataset="mnist", data_dir=str(dd), augment="none", input_size=28, num_workers=0, seed=0)
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
    D.prepare("cifar10", str(cifar_tree[0]), str(dd))
    return dd


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
    assert info.num_classes == 10 and info.image_shape == (32, 32, 1)
    import tensorflow_datasets as tfds

    src = tfds.data_source("digits", split="test", data_dir=str(digits_dir))
    labels = np.array([ex["label"] for ex in src])
    full = np.bincount(load_digits().target, minlength=10)
    assert np.all(np.abs(np.bincount(labels, minlength=10) - full * 360 / 1797) <= 1)
    ex = src[0]
    assert ex["image"].shape == (28, 28, 1) and ex["image"].dtype == np.uint8 and ex["image"].max() > 200
    # the stored image is the bilinear 28x28 upscale of one of the sklearn digits
    imgs = np.stack([PR.digits_to_28(im) for im in load_digits().images])
    assert (np.abs(imgs.astype(int) - ex["image"].astype(int)).reshape(len(imgs), -1).max(1) == 0).any()


def _split_ids(dd, name, split):
    import tensorflow_datasets as tfds

    return [P._to_str(ex["id"]) for ex in tfds.data_source(name, split=split, data_dir=str(dd))]


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
    D.prepare("cifar10", str(tgz), str(dd2))
    assert sorted(_split_ids(dd2, "cifar10", "validation")) == sorted(val)
    assert sorted(_split_ids(dd2, "cifar10", "train")) == sorted(train)
    import tensorflow_datasets as tfds

    src = tfds.data_source("cifar10", split="validation", data_dir=str(dd2))
    ex = src[0]
    want = np.asarray(Image.open(io.BytesIO(files[P._to_str(ex["id"])])).convert("RGB"))
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
    D.prepare("cifar10", str(tgz), str(tmp_path / "tfds"))
    import tensorflow_datasets as tfds

    src = tfds.data_source("cifar10", split="test", data_dir=str(tmp_path / "tfds"))
    for ex in src:
        i = int(P._to_str(ex["id"]).split("_")[1])
        np.testing.assert_array_equal(ex["image"], xte[i].reshape(3, 32, 32).transpose(1, 2, 0))
        assert ex["label"] == yte[i]
    info = D.dataset_info(Config(dataset="cifar10", data_dir=str(tmp_path / "tfds")))
    assert info.splits == {"train": 90, "validation": 10, "test": 10}
    val_labels = [ex["label"] for ex in tfds.data_source("cifar10", split="validation",
                                                          data_dir=str(tmp_path / "tfds"))]
    assert sorted(val_labels) == list(range(10))   # one per class


@pytest.fixture(scope="session")
def imagenet_tree_dir(tmp_path_factory):
    """Class-folder ImageNet tree with wnid folders, images of assorted sizes; prepared."""
    root = tmp_path_factory.mktemp("inet_tree")
    rng = np.random.default_rng(3)
    for split, wnid, n in (("train", "n01440764", 3), ("train", "n01443537", 3), ("val", "n01443537", 2)):
        d = root / split / wnid
        d.mkdir(parents=True)
        for i in range(n):
            (d / f"{wnid}_{i}.JPEG").write_bytes(jpeg_bytes(smooth_image(rng, 260 + 40 * i, 300)))
    dd = tmp_path_factory.mktemp("tfds_inet")
    D.prepare("imagenet2012", str(root), str(dd))
    return dd


def test_imagenet_tree_labels(imagenet_tree_dir):
    import tensorflow_datasets as tfds

    synsets = PR.imagenet_synsets()
    info = D.dataset_info(Config(dataset="imagenet2012", data_dir=str(imagenet_tree_dir), input_size=224))
    assert info.num_classes == 1000 and info.splits == {"train": 6, "validation": 2}
    for split in ("train", "validation"):
        for ex in tfds.data_source("imagenet2012", split=split, data_dir=str(imagenet_tree_dir)):
            assert synsets[ex["label"]] == P._to_str(ex["file_name"]).split("_")[0]


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
        path = D.prepare("imagenet2012", str(manual), str(tmp_path / "tfds"))
    assert "n01484850_1.JPEG" in caplog.text
    assert json.loads((path / PR.REPORT_FILE).read_text())["num_skipped"] == 1
    import tensorflow_datasets as tfds

    synsets = PR.imagenet_synsets()
    labels_txt = Path(os.fspath(tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")))
    val_wnids = labels_txt.read_text().split()[:4]
    dd = str(tmp_path / "tfds")
    val = {P._to_str(ex["file_name"]): synsets[ex["label"]]
           for ex in tfds.data_source("imagenet2012", split="validation", data_dir=dd)}
    assert val == {f"ILSVRC2012_val_{i:08d}.JPEG": val_wnids[i - 1] for i in (1, 2, 3, 4)}
    src = tfds.data_source("imagenet2012", split="train", data_dir=dd)
    train = {P._to_str(ex["file_name"]): synsets[ex["label"]] for ex in src}
    assert train == {f"{w}_{i}.JPEG": w for w in ("n01440764", "n01443537") for i in (0, 1)} | {
        "n01484850_0.JPEG": "n01484850"}
    raw = tfds.builder_from_directory(str(path)).as_data_source(
        "train", decoders={"image": tfds.decode.SkipDecoding()})
    assert all(ex["image"][:2] == b"\xff\xd8" for ex in raw)   # all stored as JPEG


def test_not_prepared_error_names_command(tmp_path, monkeypatch):
    cfg = Config(dataset="mnist", data_dir=str(tmp_path / "empty"))
    with pytest.raises(D.DatasetNotPreparedError) as e:
        D.ensure_prepared(cfg)
    msg = str(e.value)
    assert "'mnist'" in msg and str((tmp_path / "empty").resolve()) in msg
    assert f"alexnet-jax prepare mnist --source PATH --data-dir {(tmp_path / 'empty').resolve()}" in msg
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env_dir"))
    with pytest.raises(D.DatasetNotPreparedError, match="env_dir"):
        D.make_train_iter(Config(dataset="cifar10"), batch_size=4)


# ----------------------------------------------------------------------------------------------------
# training iterator (both paths: in-memory numpy and streaming grain)
# ----------------------------------------------------------------------------------------------------
PIPELINES = ("memory", "stream")


@pytest.fixture(params=PIPELINES)
def pipeline(request, monkeypatch):
    """Runs a test on the in-memory path (the default for the tiny datasets) and on the streaming path."""
    if request.param == "stream":
        monkeypatch.setenv(P.IN_MEMORY_ENV, "0")
    else:
        monkeypatch.delenv(P.IN_MEMORY_ENV, raising=False)
    return request.param


def take(it, n):
    return [next(it) for _ in range(n)]


def test_train_iter_determinism_and_epochs(mnist_dir, pipeline):
    dd, arrays = mnist_dir
    cfg = mnist_cfg(dd)
    it = D.make_train_iter(cfg, batch_size=8)
    assert it.pipeline == pipeline
    assert it.steps_per_epoch == N_TRAIN // 8
    a = take(it, 16)
    b = take(D.make_train_iter(cfg, batch_size=8), 16)
    c = take(D.make_train_iter(cfg, batch_size=8, seed=1), 16)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert a[0]["image"].shape == (8, 28, 28, 1) and a[0]["image"].dtype == np.float32
    assert a[0]["label"].dtype == np.int32
    ids_a = np.concatenate([ids_of(x) for x in a])
    ids_c = np.concatenate([ids_of(x) for x in c])
    assert not np.array_equal(ids_a, ids_c)
    e0, e1 = ids_a[:N_TRAIN], ids_a[N_TRAIN:]
    assert sorted(e0) == sorted(e1) == list(range(N_TRAIN))     # each epoch is a permutation
    assert not np.array_equal(e0, e1)                            # ... a different one each epoch
    lab = np.concatenate([x["label"] for x in a])
    np.testing.assert_array_equal(lab, arrays["train"][1][ids_a])
    # pixels are image/255 for augment=none
    first = arrays["train"][0][ids_of(a[0])[0]]
    np.testing.assert_allclose(a[0]["image"][0, ..., 0], first / 255.0, atol=1e-6)


@pytest.mark.parametrize("process_count", [2, 3])
def test_train_iter_process_shards_disjoint(mnist_dir, pipeline, process_count):
    dd, _ = mnist_dir
    shards = []
    share = N_TRAIN // process_count
    for p in range(process_count):
        it = D.make_train_iter(mnist_cfg(dd), batch_size=4, process_index=p, process_count=process_count)
        assert it.steps_per_epoch == share // 4
        ids = np.concatenate([ids_of(b) for b in take(it, it.steps_per_epoch)])
        assert len(set(ids)) == len(ids) == it.steps_per_epoch * 4
        shards.append(set(ids))
    for i in range(process_count):
        for j in range(i):
            assert not shards[i] & shards[j]
    if process_count == 2:
        assert set.union(*shards) == set(range(N_TRAIN))


def test_memory_train_epochs_across_batches(mnist_dir):
    """Batches that straddle epochs: every run of N_TRAIN stream positions is one epoch's permutation."""
    dd, _ = mnist_dir
    it = D.make_train_iter(mnist_cfg(dd), batch_size=24)
    assert isinstance(it, D.ArrayTrainIterator) and it.steps_per_epoch == N_TRAIN // 24
    ids = np.concatenate([ids_of(b) for b in take(it, 8)])          # 192 = 3 epochs
    for e in range(3):
        assert sorted(ids[e * N_TRAIN:(e + 1) * N_TRAIN]) == list(range(N_TRAIN))
    state = json.loads(it.get_state())
    assert (state["step"], state["epoch"], state["position"]) == (8, 3, 0)
    # processes share each epoch's permutation and take disjoint slices of it
    its = [D.make_train_iter(mnist_cfg(dd), batch_size=8, process_index=p, process_count=2) for p in (0, 1)]
    both = np.concatenate([x.epoch_indices(1) for x in its])
    np.testing.assert_array_equal(it.arrays.images[both, 0, 0, 0], ids[N_TRAIN:2 * N_TRAIN])


@pytest.mark.parametrize("pipeline,workers", [("memory", 0), ("stream", 0),
                                              pytest.param("stream", 2, marks=pytest.mark.slow)],
                         indirect=["pipeline"])   # 2 worker procs: ~15 s
@pytest.mark.parametrize("augment", ["none", "lenet_affine"])
def test_train_iter_resume_exact(mnist_dir, pipeline, workers, augment):
    dd, _ = mnist_dir
    cfg = mnist_cfg(dd, num_workers=workers, augment=augment, input_size=32)
    it = D.make_train_iter(cfg, batch_size=8)
    take(it, 5)
    state = it.get_state()
    json.loads(state)                                      # JSON-able bytes
    want = take(it, 6)                                     # crosses the epoch boundary
    it2 = D.make_train_iter(cfg, batch_size=8)
    it2.set_state(state)
    got = take(it2, 6)
    for x, y in zip(want, got, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    it.close(), it2.close()
    with pytest.raises(ValueError, match="batch_size"):
        D.make_train_iter(cfg, batch_size=4).set_state(state)


def test_state_across_pipelines(mnist_dir, monkeypatch, caplog):
    """A streaming (grain) state, e.g. an older checkpoint, resumes the in-memory path after as many
    examples (warned); an in-memory state is refused by the streaming path."""
    dd, _ = mnist_dir
    cfg = mnist_cfg(dd)
    monkeypatch.setenv(P.IN_MEMORY_ENV, "0")
    stream = D.make_train_iter(cfg, batch_size=8)
    take(stream, 3)
    grain_state = stream.get_state()
    monkeypatch.delenv(P.IN_MEMORY_ENV)
    mem = D.make_train_iter(cfg, batch_size=8)
    with caplog.at_level(logging.WARNING):
        mem.set_state(grain_state)
    assert mem.step == 3 and "streaming-pipeline" in caplog.text
    with pytest.raises(ValueError, match="memory"):
        stream.set_state(mem.get_state())


def test_bad_image_reported_and_skipped(mnist_dir, pipeline, monkeypatch, caplog):
    dd, _ = mnist_dir
    cfg = mnist_cfg(dd)
    import tensorflow_datasets as tfds

    monkeypatch.setattr(P, "DISK_CACHE", False)                     # decode afresh (no cached split)
    monkeypatch.setattr(P, "_ARRAY_SPLITS", collections.OrderedDict())
    bad_id = {split: int(tfds.data_source("mnist", split=split, data_dir=str(dd))[7]["image"][0, 0, 0])
              for split in ("train", "test")}
    orig = P.RecordSource._record

    def corrupt(self, i, ex):
        rec = orig(self, i, ex)
        return dict(rec, image=b"not an image") if i == 7 else rec

    monkeypatch.setattr(P.RecordSource, "_record", corrupt)
    with caplog.at_level(logging.WARNING):
        ids = np.concatenate([ids_of(b) for b in take(D.make_train_iter(cfg, batch_size=8), 16)])
        ev = D.make_eval_iter(cfg, "test", batch_size=4)
        batches = list(ev)
    assert bad_id["train"] not in ids and len(set(ids)) == N_TRAIN - 1
    assert "train#7" in caplog.text and "test#7" in caplog.text
    assert sum(b["mask"].sum() for b in batches) == N_TEST - 1
    bad = [b["image"][~b["mask"]] for b in batches]
    assert all((x == 0).all() for x in bad)                         # masked slots are zeros


# ----------------------------------------------------------------------------------------------------
# eval iterator
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("process_count,batch_size", [(1, 4), (2, 4), (3, 2)])
def test_eval_iter_every_example_once(mnist_dir, pipeline, process_count, batch_size):
    dd, arrays = mnist_dir
    seen, nbatches = [], set()
    for p in range(process_count):
        ev = D.make_eval_iter(mnist_cfg(dd), "test", batch_size=batch_size, process_index=p,
                              process_count=process_count)
        assert ev.pipeline == pipeline
        batches = list(ev)
        nbatches.add(len(batches))
        assert len(batches) == len(ev)
        for b in batches:
            assert b["image"].shape == (batch_size, 28, 28, 1) and b["mask"].dtype == bool
            seen += list(ids_of(b)[b["mask"]])
            np.testing.assert_array_equal(b["label"][b["mask"]], arrays["test"][1][ids_of(b)[b["mask"]]])
        assert [x.tolist() for x in ids_of(batches[0])] == [x.tolist() for x in ids_of(list(ev)[0])]
    assert len(nbatches) == 1                                 # same number of batches on every process
    assert sorted(seen) == list(range(N_TEST))


def _eval_batches(cfg, split, monkeypatch, pipeline, **kw):
    if pipeline == "stream":
        monkeypatch.setenv(P.IN_MEMORY_ENV, "0")
    else:
        monkeypatch.delenv(P.IN_MEMORY_ENV, raising=False)
    ev = D.make_eval_iter(cfg, split, **kw)
    assert ev.pipeline == pipeline
    return list(ev)


@pytest.mark.parametrize("dataset,augment,input_size,ten_crop,process_count", [
    ("mnist", "none", 28, False, 1), ("mnist", "lenet", 32, False, 3),
    ("mnist", "lenet_affine", 32, False, 1),
    ("cifar10", "cifar", 32, False, 2), ("cifar10", "cifar", 24, True, 1), ("cifar10", "cifar", 40, False, 1),
    ("cifar10", "none", 24, False, 1)])
def test_memory_and_stream_eval_identical(mnist_dir, cifar_dir, monkeypatch, dataset, augment, input_size,
                                          ten_crop, process_count):
    dd = mnist_dir[0] if dataset == "mnist" else cifar_dir
    cfg = Config(dataset=dataset, data_dir=str(dd), augment=augment, input_size=input_size, num_workers=0)
    split = "test" if dataset == "mnist" else "validation"
    for p in range(process_count):
        kw = dict(batch_size=3, process_index=p, process_count=process_count, ten_crop=ten_crop)
        mem = _eval_batches(cfg, split, monkeypatch, "memory", **kw)
        stream = _eval_batches(cfg, split, monkeypatch, "stream", **kw)
        assert len(mem) == len(stream) > 1
        for x, y in zip(mem, stream, strict=True):
            assert x["image"].shape == y["image"].shape and x["image"].dtype == y["image"].dtype
            for k in ("image", "label", "mask"):
                np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("augment,input_size", [("cifar", 32), ("cifar", 24), ("lenet_affine", 32)])
def test_memory_train_batch_equals_per_example_preprocessing(mnist_dir, cifar_dir, augment, input_size):
    """In-memory batch = the records decoded as the streaming path does, then transformed one by one with
    the same draws (for cifar: an independent reference of pad / crop / flip)."""
    dd = cifar_dir if augment == "cifar" else mnist_dir[0]
    cfg = Config(dataset="cifar10" if augment == "cifar" else "mnist", data_dir=str(dd), augment=augment,
                 input_size=input_size, seed=5)
    it = D.make_train_iter(cfg, batch_size=8)
    assert isinstance(it, D.ArrayTrainIterator)
    take(it, 2)
    b = next(it)
    idx, params = it.batch_indices(2), it.batch_params(2)
    pre = it.preprocessor
    src = P.RecordSource(D.dataset_dir(cfg.dataset, cfg.data_dir), "train")
    recs = src.__getitems__(idx)
    np.testing.assert_array_equal(b["label"], [r["label"] for r in recs])
    for i, rec in enumerate(recs):
        img = pre.decode(rec["image"])
        one = {k: v[i:i + 1] for k, v in params.items()}
        np.testing.assert_array_equal(b["image"][i], pre.train_batch(img[None], one)[0])
        if augment == "cifar":
            x = img.astype(np.float32)
            if img.shape[0] != pre.base_size:
                pytest.fail("cifar images are stored 32x32")
            x = x - pre.mean
            x = np.pad(x, ((4, 4), (4, 4), (0, 0)))
            t, l = params["top"][i], params["left"][i]
            x = x[t:t + input_size, l:l + input_size]
            np.testing.assert_array_equal(b["image"][i], x[:, ::-1] if params["flip"][i] else x)


def test_array_split_disk_cache(mnist_dir, monkeypatch):
    dd, arrays = mnist_dir
    cfg = mnist_cfg(dd)
    path = D.dataset_dir("mnist", str(dd))
    pre = D.make_preprocessor(cfg, path)
    monkeypatch.setattr(P, "_ARRAY_SPLITS", collections.OrderedDict())
    a = D.load_array_split(path, "test", pre)
    cached = path / "cache" / "test_native_28x28x1.npz"
    assert cached.is_file() and not list((path / "cache").glob("*.tmp"))
    assert a.images.shape == (N_TEST, 28, 28, 1) and a.valid.all()
    order = a.images[:, 0, 0, 0]
    np.testing.assert_array_equal(a.images[..., 0], arrays["test"][0][order])
    np.testing.assert_array_equal(a.labels, arrays["test"][1][order])
    assert D.load_array_split(path, "test", pre) is a                 # kept in memory

    def no_decode(*args, **kw):
        raise AssertionError("decoded again")

    monkeypatch.setattr(P, "_ARRAY_SPLITS", collections.OrderedDict())
    monkeypatch.setattr(P, "_decode_split", no_decode)
    b = D.load_array_split(path, "test", pre)                          # from the .npz
    np.testing.assert_array_equal(b.images, a.images)
    monkeypatch.setattr(P, "_ARRAY_SPLITS", collections.OrderedDict())
    monkeypatch.setattr(P, "_fingerprint", lambda p: "changed dataset")
    with pytest.raises(AssertionError, match="decoded again"):        # stale cache: decoded afresh
        D.load_array_split(path, "test", pre)
    monkeypatch.setenv(P.IN_MEMORY_ENV, str(N_TEST * 28 * 28 - 1))    # one byte too many: streaming
    assert D.load_array_split(path, "test", pre) is None


def test_path_choice(mnist_dir, imagenet_tree_dir, monkeypatch):
    dd, _ = mnist_dir
    assert isinstance(D.make_train_iter(mnist_cfg(dd), batch_size=8), D.ArrayTrainIterator)
    assert isinstance(D.make_eval_iter(mnist_cfg(dd), "test", batch_size=8), D.ArrayEvalIterator)
    cfg = Config(dataset="imagenet2012", data_dir=str(imagenet_tree_dir), augment="alexnet", input_size=224)
    path = D.dataset_dir("imagenet2012", str(imagenet_tree_dir))
    assert D.load_array_split(path, "validation", D.make_preprocessor(cfg, path)) is None   # variable size
    monkeypatch.setenv(P.IN_MEMORY_ENV, "0")
    assert isinstance(D.make_train_iter(mnist_cfg(dd), batch_size=8), D.TrainIterator)


# ----------------------------------------------------------------------------------------------------
# preprocessing
# ----------------------------------------------------------------------------------------------------
def test_ten_crop_views():
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    pre = P.Preprocessor("alexnet", 224, 3, mean=None)
    dec = pre.decode(jpeg_bytes(img, "PNG"))
    np.testing.assert_array_equal(dec, img)                  # 256x256 is stored as is
    views = pre.eval(dec, ten_crop=True)
    x = img.astype(np.float32)
    s = 224
    expect = [x[:s, :s], x[:s, -s:], x[-s:, :s], x[-s:, -s:], x[16:16 + s, 16:16 + s]]
    expect += [v[:, ::-1] for v in expect]
    assert views.shape == (10, 224, 224, 3)
    for v, e in zip(views, expect, strict=True):
        np.testing.assert_array_equal(v, e)
    np.testing.assert_array_equal(pre.eval(dec), expect[4])


def test_alexnet_pipeline_end_to_end(imagenet_tree_dir):
    cfg = Config(dataset="imagenet2012", data_dir=str(imagenet_tree_dir), augment="alexnet", input_size=224,
                 train_split="train")
    it = D.make_train_iter(cfg, batch_size=2)
    b = next(it)
    assert b["image"].shape == (2, 224, 224, 3) and b["image"].dtype == np.float32
    path = imagenet_tree_dir / "imagenet2012" / "5.1.0"
    mean = np.load(path / "mean_alexnet_train_256x256x3.npy")
    assert mean.shape == (256, 256, 3) and 0 < mean.mean() < 255
    assert abs(float(b["image"].mean())) < 40                     # centred raw RGB
    ten = list(D.make_eval_iter(cfg, "validation", batch_size=2, ten_crop=True))
    one = list(D.make_eval_iter(cfg, "validation", batch_size=2))
    assert ten[0]["image"].shape == (2, 10, 224, 224, 3)
    np.testing.assert_allclose(ten[0]["image"][:, 4], one[0]["image"], atol=1e-5)
    np.testing.assert_allclose(ten[0]["image"][:, 5:], ten[0]["image"][:, :5, :, ::-1], atol=1e-5)


def _coord_image() -> np.ndarray:
    r, c = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    return np.stack([r, c, np.zeros_like(r)], -1).astype(np.uint8)


def _train_outputs(pre, img, rng, n, mode):
    """n training outputs of one image: one at a time (streaming path) or in batches (in-memory path)."""
    if mode == "single":
        for _ in range(n):
            yield pre.train(img, rng)
        return
    for start in range(0, n, 20):
        k = min(20, n - start)
        yield from pre.train_batch(np.repeat(img[None], k, axis=0), pre.draw(rng, k))


@pytest.mark.parametrize("mode", ["single", "batch"])
@pytest.mark.parametrize("augment,input_size,span", [("alexnet", 224, 32), ("cifar", 32, 8)])
def test_crop_offsets_uniform_and_flip_rate(augment, input_size, span, mode):
    """Pixels hold their (row, col) coordinates, so each output reveals its crop offset and flip."""
    n = 3000
    rng = np.random.default_rng(6)
    if augment == "alexnet":   # 256x256 base, offsets 0..32
        img, scale, shift = _coord_image(), 1, 0
        pre = P.Preprocessor("alexnet", input_size, 3, lighting_std=0.0)
    else:   # 32x32 zero-padded by 4, offsets 0..8; coordinates + 1 so that the padding (0) is distinct
        img = _coord_image()[:32, :32] + np.array([1, 1, 0], np.uint8)
        pre, scale, shift = P.Preprocessor("cifar", input_size, 3, mean=np.zeros(3, np.float32)), 1, 1 - 4
    tops, lefts, flips = [], [], []
    for out in _train_outputs(pre, img, rng, n, mode):
        x = np.rint(out * scale).astype(int)
        flipped = x[16, 15, 1] > x[16, 17, 1]
        if flipped:
            x = x[:, ::-1]
        tops.append(x[16, 16, 0] - 16 - shift), lefts.append(x[16, 16, 1] - 16 - shift), flips.append(flipped)
    for o in (np.array(tops), np.array(lefts)):
        assert o.min() == 0 and o.max() == span
        counts = np.bincount(o, minlength=span + 1)
        expected = n / (span + 1)
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < span + 6 * np.sqrt(2 * span)          # ~uniform (chi-square, span dof, ~6 sigma)
    assert abs(np.mean(flips) - 0.5) < 0.04


def test_lighting_noise_covariance():
    n = 6000
    rng = np.random.default_rng(7)
    img = np.full((256, 256, 3), 128, np.uint8)
    pre = P.Preprocessor("alexnet", 8, 3, mean=np.full((256, 256, 3), 128, np.float32))
    offsets = np.stack([pre.train(img, rng)[0, 0] for _ in range(n)]).astype(np.float64)
    # the per-image offset is constant over the crop
    x = pre.train(img, rng)
    np.testing.assert_allclose(x, np.broadcast_to(x[0, 0], x.shape), atol=1e-4)
    V, lam = D.IMAGENET_EIGVEC.astype(np.float64), D.IMAGENET_EIGVAL.astype(np.float64)
    analytic = 255.0**2 * V @ np.diag((0.1 * lam) ** 2) @ V.T
    emp = np.cov(offsets.T)
    assert np.abs(offsets.mean(0)).max() < 0.1 * np.sqrt(analytic.diagonal().max())
    assert np.linalg.norm(emp - analytic) / np.linalg.norm(analytic) < 0.08
    # each eigen-direction separately (variances differ by 2000x): coordinates alpha_j * lam_j * 255
    Vinv = np.linalg.inv(V)
    coord_var = np.var(offsets @ Vinv.T, axis=0)
    np.testing.assert_allclose(coord_var, (255 * 0.1 * lam) ** 2, rtol=0.1)


def test_lenet_scaling_and_padding():
    img = np.zeros((28, 28, 1), np.uint8)
    img[:, 14:] = 255
    x = P.Preprocessor("lenet", 32, 1).eval(img)
    assert x.shape == (32, 32, 1)
    np.testing.assert_allclose(x[2:30, 2:16], -0.1, atol=1e-6)
    np.testing.assert_allclose(x[2:30, 16:30], 1.175, atol=1e-6)
    border = np.concatenate([x[:2].ravel(), x[30:].ravel(), x[:, :2].ravel(), x[:, 30:].ravel()])
    np.testing.assert_allclose(border, -0.1, atol=1e-6)
    assert P.Preprocessor("lenet", 28, 1).eval(img).shape == (28, 28, 1)
    rng = np.random.default_rng(0)
    pre = P.Preprocessor("lenet_affine", 32, 1)
    outs = [pre.train(img, rng) for _ in range(20)]
    assert all(o.shape == (32, 32, 1) and o.min() >= -0.1 - 1e-5 and o.max() <= 1.175 + 1e-5 for o in outs)
    assert not all(np.allclose(o, x) for o in outs)
    np.testing.assert_array_equal(pre.eval(img), x)


def test_warp_affine_matches_scipy():
    """The batched bilinear warp of lenet_affine = scipy.ndimage.affine_transform, order=1, mode=constant."""
    from scipy import ndimage

    rng = np.random.default_rng(8)
    x = rng.random((16, 32, 30, 2)).astype(np.float32)
    params = P.affine_params(rng, 16)
    got = P.warp_affine_batch(x, params)
    for i in range(16):
        sy, sx, sh, ty, tx = params[i]
        inv = np.linalg.inv(np.array([[sy, 0.0], [sh, sx]]))
        ctr = (np.array(x.shape[1:3], np.float64) - 1) / 2
        off = ctr - inv @ (ctr + np.array([ty, tx]))
        for c in range(2):
            want = ndimage.affine_transform(x[i, ..., c], inv, offset=off, order=1, mode="constant", cval=0.0)
            np.testing.assert_allclose(got[i, ..., c], want, atol=1e-6)
        np.testing.assert_array_equal(P.apply_affine(x[i], params[i]), got[i])
    ident = np.array([[1.0, 1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(P.warp_affine_batch(x[:1], ident), x[:1])


def test_digits_lenet_pipeline(digits_dir):
    cfg = Config(dataset="digits", data_dir=str(digits_dir), augment="lenet_affine", input_size=32, seed=3)
    b = next(D.make_train_iter(cfg, batch_size=16))
    b2 = next(D.make_train_iter(cfg, batch_size=16))
    np.testing.assert_array_equal(b["image"], b2["image"])      # deterministic given the seed
    assert b["image"].shape == (16, 32, 32, 1)
    assert b["image"].min() >= -0.1 - 1e-5 and b["image"].max() <= 1.175 + 1e-5
    e = next(iter(D.make_eval_iter(cfg.replace(augment="lenet"), "test", batch_size=360)))
    assert e["mask"].all() and np.isclose(e["image"].min(), -0.1) and e["image"].max() > 1.0


def test_cifar_pipeline_mean_image(cifar_dir):
    cfg = Config(dataset="cifar10", data_dir=str(cifar_dir), augment="cifar", input_size=32)
    b = next(D.make_train_iter(cfg, batch_size=16))
    assert b["image"].shape == (16, 32, 32, 3)
    mean = np.load(cifar_dir / "cifar10" / "3.0.2" / "mean_cifar_train_32x32x3.npy")
    assert mean.shape == (32, 32, 3)
    e = list(D.make_eval_iter(cfg, "train", batch_size=128))
    x = e[0]["image"][e[0]["mask"]]
    np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-4)         # per-pixel centred over the train split


def test_import_does_not_pull_tensorflow(tmp_path):
    code = ("import sys; import alexnet_jax.data as D; from alexnet_jax.config import Config;"
            f"cfg = Config(dataset='digits', data_dir={str(tmp_path)!r}, augment='lenet');"
            "next(D.make_train_iter(cfg, batch_size=4));"
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; print('OK')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]
    assert "Failed to import TensorFlow" not in r.stderr


# ----------------------------------------------------------------------------------------------------
# the real data in ../shared/data (skipped when absent)
# ----------------------------------------------------------------------------------------------------
def test_shared_mnist(tmp_path):
    src = SHARED / "mnist"
    if not (src / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"shared MNIST not found at {src}")
    path = D.prepare("mnist", str(src), str(tmp_path))
    info = D.dataset_info(Config(dataset="mnist", data_dir=str(tmp_path)))
    assert info.splits == {"train": 60000, "test": 10000}
    import tensorflow_datasets as tfds

    x = PR.read_idx(src / "t10k-images-idx3-ubyte.gz")
    y = PR.read_idx(src / "t10k-labels-idx1-ubyte.gz")
    src_ds = tfds.builder_from_directory(str(path)).as_data_source("test")
    lookup = {x[i].tobytes(): int(y[i]) for i in range(len(x))}
    for i in range(0, 10000, 997):
        ex = src_ds[i]
        assert lookup[ex["image"][..., 0].tobytes()] == ex["label"]


@pytest.mark.slow
def test_shared_cifar10(tmp_path):
    src = SHARED / "cifar10" / "cifar10_train_jpeg.tar.gz"
    if not src.is_file():
        pytest.skip(f"shared CIFAR-10 not found at {src}")
    path = D.prepare("cifar10", str(src), str(tmp_path))
    info = D.dataset_info(Config(dataset="cifar10", data_dir=str(tmp_path), eval_split="validation"))
    assert info.splits == {"train": 45000, "validation": 5000}
    assert json.loads((path / PR.REPORT_FILE).read_text())["num_skipped"] == 0
    import tensorflow_datasets as tfds

    val = tfds.data_source("cifar10", split="validation", data_dir=str(tmp_path))
    labels = np.array([val[i]["label"] for i in range(len(val))])
    assert np.all(np.bincount(labels, minlength=10) == 500)
    cfg = Config(dataset="cifar10", data_dir=str(tmp_path), augment="cifar", input_size=32, num_workers=2)
    b = next(D.make_train_iter(cfg, batch_size=64))
    assert b["image"].shape == (64, 32, 32, 3)
