"""The model zoo (alexnet_jax/zoo): published AlexNets imported as workdirs, checked against independent
references on weights made here (no published file is fetched; README says where users get them).

References (tests/zoo_reference.py): for torchvision, a torch module with torchvision.models.alexnet's exact
structure and module names and torchvision's PIL preprocessing written out (torchvision from the package
index does not import beside the CPU-only torch here); for Caffe, a float64 numpy forward pass with Caffe's
semantics and .caffemodel / .binaryproto files serialized by the protobuf runtime.  Tests that need torch
skip with a reason when it is absent (the `peer` extra).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zoo_reference as zr  # tests/zoo_reference.py (pytest puts tests/ on sys.path)

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "data" / "imagenet_samples" / "imagenet_samples_100.tar"
FIXTURES = Path(__file__).parent / "fixtures" / "zoo"
HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed (the `peer` extra: pip install "
                                                         "torch==2.13.0); the torchvision reference is a torch module")
needs_samples = pytest.mark.skipif(not SAMPLES.is_file(), reason=f"the sample ImageNet photos are not at {SAMPLES}")
TOL = 1e-5          # relative difference per layer: max |ours - reference| / max |reference|


def rel(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def cli(argv, capsys) -> tuple[int, str, str]:
    from alexnet_jax.cli import main

    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_refused(rc: int, err: str, workdir: Path, *words: str) -> None:
    """Exit 2, one `error:` line naming what is wrong, and no workdir (nor a staging folder) left behind."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert not workdir.exists()
    assert not [p for p in workdir.parent.iterdir() if p.name.startswith(workdir.name + ".importing")]


def photos(folder: Path, sizes=((300, 400), (500, 333), (256, 256), (231, 640), (701, 257))) -> list[Path]:
    """Smooth random JPEG photos of several shapes (w, h): each exercises the resize and crop arithmetic."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (w, h) in enumerate(sizes):
        small = rng.uniform(0, 255, (h // 16 + 2, w // 16 + 2, 3)).astype(np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        noise = rng.normal(0, 12, (h, w, 3))
        arr = np.clip(np.asarray(img, np.float64) + noise, 0, 255).astype(np.uint8)
        p = folder / f"photo{i}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        out.append(p)
    return out


def run_ours(workdir, images) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """(logits, {layer: every column's output joined, NCHW / NC}, model inputs) of a workdir on image files,
    through the tools' own path (restore, the recorded preprocessing, the model's taps)."""
    from alexnet_jax.restore import restore_workdir as restore
    from alexnet_jax.tools import _cli, _images

    r = restore(str(workdir))
    inputs = _images.load_inputs(r, images=[str(p) for p in images])
    logits, taps = _cli.run_model(r, inputs.x, batch_size=8)
    joined = {}
    for k, cols in taps.items():
        v = np.concatenate(cols, axis=-1)
        joined[k] = v.transpose(0, 3, 1, 2) if v.ndim == 4 else v
    return logits, joined, inputs.x


# ================================================================================================
# protobuf: wire format and text format
# ================================================================================================
def test_protowire_reads_the_protobuf_runtime_encoding():
    pytest.importorskip("google.protobuf")
    from alexnet_jax import protowire as pw

    pb = zr.caffe_pb()
    blob = pb["BlobProto"]()
    blob.shape.dim.extend([4096, 2 ** 40, 3])
    values = np.array([1.5, -2.25, 3e-8, 1e30], np.float32)
    blob.data.extend(values.tolist())
    blob.num = 7
    m = pw.message(blob.SerializeToString())
    assert pw.varints(pw.message(m[7][0])[1]) == [4096, 2 ** 40, 3]
    assert np.array_equal(pw.packed(m[5], "<f4"), values)
    assert m[1] == [7]
    net = pb["NetParameter"](name="x")
    layer = net.layer.add(name="conv1", type="Convolution")
    layer.bottom.extend(["data"])
    layer.convolution_param.num_output = 96
    top = pw.message(net.SerializeToString())
    assert pw.string(top[1][0]) == "x"
    lm = pw.message(top[100][0])
    assert [pw.string(lm[1][0]), pw.string(lm[2][0]), pw.string(lm[3][0])] == ["conv1", "Convolution", "data"]
    assert pw.message(lm[106][0])[1] == [96]
    # an unpacked repeated float (old writers) reads the same as a packed one
    unpacked = b"".join(pw.field(5, pw.FIXED32, np.float32(v).tobytes()) for v in values)
    assert np.array_equal(pw.packed(pw.message(unpacked)[5], "<f4"), values)


def test_protowire_truncated_message_is_one_error():
    pytest.importorskip("google.protobuf")
    from alexnet_jax import protowire as pw

    blob = zr.caffe_pb()["BlobProto"]()
    blob.data.extend([1.0] * 100)
    data = blob.SerializeToString()
    for cut in (1, 2, len(data) // 2, len(data) - 1):
        with pytest.raises(pw.ProtobufError):
            pw.message(data[:cut])


def test_prototxt_text_format(tmp_path):
    from alexnet_jax.zoo.caffe import CaffeError, parse_text

    text = """# a comment
    name: "net"   layer { name: 'a' type: "Conv" "olution" param < lr_mult: 1 > shape: { dim: [1, 2, 3] } }
    layer { name: "b"; alpha: 1e-4, beta: -0.75 pool: MAX }
    """
    d = parse_text(text)
    assert d["name"] == ["net"]
    a, b = d["layer"]
    assert a["name"] == ["a"] and a["type"] == ["Convolution"] and a["param"] == [{"lr_mult": ["1"]}]
    assert a["shape"][0]["dim"] == ["1", "2", "3"]
    assert float(b["alpha"][0]) == 1e-4 and float(b["beta"][0]) == -0.75 and b["pool"] == ["MAX"]
    for bad in ('layer { name: "a" ', "layer name", 'name: "x" }'):
        with pytest.raises(CaffeError):
            parse_text(bad, "f.prototxt")


@pytest.mark.parametrize("v1", [False, True], ids=["V2", "V1"])
def test_bvlc_deploy_definition_is_read_and_checked(tmp_path, v1):
    from alexnet_jax.zoo.caffe import check_deploy, read_prototxt

    p = tmp_path / "deploy.prototxt"
    p.write_text(zr.bvlc_deploy(1.0, 1000, v1=v1))
    layers, shape = read_prototxt(str(p))
    assert shape == [10, 3, 227, 227]
    types = [x.type for x in layers if x.type != "Input"]
    assert types[:8] == ["Convolution", "ReLU", "LRN", "Pooling", "Convolution", "ReLU", "LRN", "Pooling"]
    assert types[-3:] == ["Dropout", "InnerProduct", "Softmax"]
    assert layers[0].type == ("Convolution" if v1 else "Input")
    width, classes, learnable = check_deploy(layers, shape, str(p))
    assert (width, classes) == (1.0, 1000)
    assert [x.name for x in learnable] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]


# ================================================================================================
# .pth files without torch
# ================================================================================================
def _tiny_expected() -> dict[str, np.ndarray]:
    """What tests/fixtures/zoo/tiny_{zip,legacy}.pth hold (written by torch 2.13's torch.save, the legacy one
    with _use_new_zipfile_serialization=False): dtypes, a transposed tensor, a view at a storage offset."""
    import ml_dtypes

    return {"a.weight": np.arange(12, dtype=np.float32).reshape(3, 4) / 8,
            "a.bias": np.array([-1.5, 0.25, 3.0], np.float32),
            "half": (np.arange(6).reshape(2, 3) - 2.5).astype(np.float16),
            "long": np.array([1, -2, 2 ** 40], np.int64),
            "transposed": np.arange(6, dtype=np.float64).reshape(2, 3).T,
            "base": np.arange(10, dtype=np.float32),
            "view": np.arange(2, 8, dtype=np.float32).reshape(2, 3),
            "bf16": np.array([1.0, -2.5, 0.15625], ml_dtypes.bfloat16)}


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_pth_reader_reads_torch_save_files(fmt):
    from alexnet_jax.zoo.pth import read_state_dict

    got, kind = read_state_dict(FIXTURES / f"tiny_{fmt}.pth")
    want = _tiny_expected()
    assert kind == fmt and list(got) == list(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and np.array_equal(got[k], v), k


def test_pth_reader_runs_nothing_from_the_file(tmp_path):
    """A pickle naming any other global (here os.system) is refused by name, never called."""
    from alexnet_jax.zoo.pth import PthError, read_pth

    marker = tmp_path / "ran"
    payload = (b"\x80\x02cos\nsystem\nq\x00X" + len(f"touch {marker}").to_bytes(4, "little")
               + f"touch {marker}".encode() + b"q\x01\x85q\x02Rq\x03.")
    p = tmp_path / "evil.pth"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("evil/data.pkl", payload)
    with pytest.raises(PthError, match="os.system"):
        read_pth(p)
    assert not marker.exists()
    harmless = payload.replace(b"cos\nsystem", b"cbuiltins\nlen")       # the same pickle, well-formed
    assert pickle.loads(harmless) == len(f"touch {marker}")


def test_torchvision_bad_files_without_torch(tmp_path, capsys):
    wd = tmp_path / "wd"
    rc, _, err = cli(["import", "torchvision", FIXTURES / "tiny_zip.pth", "--workdir", wd], capsys)
    assert_refused(rc, err, wd, "not a state_dict of torchvision's alexnet", "missing features.0.weight")
    for fmt in ("zip", "legacy"):
        data = (FIXTURES / f"tiny_{fmt}.pth").read_bytes()
        cut = tmp_path / f"cut_{fmt}.pth"
        cut.write_bytes(data[: len(data) * 2 // 3])
        rc, _, err = cli(["import", "torchvision", cut, "--workdir", wd], capsys)
        assert_refused(rc, err, wd, str(cut), "cut short")
    rc, _, err = cli(["import", "torchvision", tmp_path / "absent.pth", "--workdir", wd], capsys)
    assert_refused(rc, err, wd, "no such file")


# ================================================================================================
# Caffe: bvlc_alexnet -> alexnet (two columns, Caffe's LRN)
# ================================================================================================
SMALL_W = 0.0625       # conv1 6 kernels (3 per column) ... fc 256: the bvlc layout at 1/16 of its widths


def write_bvlc(folder: Path, blobs, fmt="V2", width=SMALL_W, classes=1000, deploy=None, mean=None):
    """(caffemodel, deploy, mean) files of a bvlc_alexnet made of `blobs`."""
    pytest.importorskip("google.protobuf")
    folder.mkdir(parents=True, exist_ok=True)
    model, proto, mean_f = folder / f"bvlc_{fmt}.caffemodel", folder / "deploy.prototxt", folder / "mean.binaryproto"
    model.write_bytes(zr.caffemodel_bytes(blobs, fmt))
    proto.write_text(deploy or zr.bvlc_deploy(width, classes, v1=fmt == "V1"))
    if mean is None:
        mean = np.random.default_rng(7).uniform(80, 140, (3, 256, 256)).astype(np.float32)
    mean_f.write_bytes(zr.binaryproto_bytes(mean))
    return model, proto, mean_f


def import_bvlc(files, workdir, capsys, lrn="caffe") -> dict:
    model, proto, mean = files
    rc, out, err = cli(["import", "caffe", model, "--deploy", proto, "--mean", mean, "--workdir", workdir,
                        "--lrn", lrn], capsys)
    assert rc == 0, err
    return json.loads(out.strip().splitlines()[-1])


def caffe_layers_of_ours(workdir, x_bgr_NCHW) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
    """Our imported net's per-layer outputs (NCHW, columns joined) on a given centred BGR input, and the
    shapes of its pooled maps."""
    import jax

    from alexnet_jax.restore import restore_workdir as restore

    r = restore(str(workdir))
    x = np.ascontiguousarray(np.asarray(x_bgr_NCHW)[:, ::-1].transpose(0, 2, 3, 1), np.float32)   # RGB NHWC
    _, taps = jax.jit(lambda p, e, x: r.trainer.forward(p, e, x, taps=True))(r.state.params, r.state.extra, x)
    out = {}
    for k, cols in taps.items():
        v = np.concatenate([np.asarray(c) for c in cols], axis=-1)
        out[k] = v.transpose(0, 3, 1, 2) if v.ndim == 4 else v
    return out, r


@pytest.mark.parametrize("fmt", ["V2", "V1"])
def test_bvlc_import_exact_against_caffe_semantics(tmp_path, capsys, fmt):
    """A .caffemodel of the bvlc layout (protobuf runtime; V2 `layer`, or legacy V1 `layers` with 4-D blobs)
    imports to a net whose every layer equals a float64 numpy forward pass with Caffe's semantics (grouped
    convolutions, LRN k=1 alpha/n across both columns, ceil-rounded max-pooling, channel-major fc6) within
    float32 rounding."""
    blobs = zr.bvlc_blobs(SMALL_W, 1000, seed=1)
    res = import_bvlc(write_bvlc(tmp_path, blobs, fmt), tmp_path / "wd", capsys)
    assert res["caffemodel_format"] == fmt and res["lrn"] == "caffe" and res["input_size"] == 227
    x_bgr = np.random.default_rng(2).uniform(-120, 120, (2, 3, 227, 227))
    ref = zr.caffe_forward(blobs, x_bgr, lrn="caffe")
    ours, _ = caffe_layers_of_ours(tmp_path / "wd", x_bgr)
    for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        assert rel(ours[layer], ref[layer]) <= TOL, (layer, rel(ours[layer], ref[layer]))
    # Caffe's LRN matters here (the test is not blind to it): the paper's per-column LRN differs a lot
    paper = zr.caffe_forward(blobs, x_bgr, lrn="paper")
    assert rel(paper["fc8"], ref["fc8"]) > 1e-2


def test_pooling_shapes_equal_caffes_at_227():
    """Caffe rounds pooled sizes up; at 227 each of the 2012 net's three poolings gives the size our floor
    rounding gives (55 -> 27, 27 -> 13, 13 -> 6), and the model's maps have Caffe's shapes."""
    import jax

    from alexnet_jax.models import create_model

    shapes = {}

    def tap(name, c, v):
        shapes[name] = v.shape
        return v

    def forward(x):
        m = create_model("alexnet", num_classes=10, input_size=227, width=SMALL_W, lrn="caffe")
        shapes["fc6_in"] = m.fc6.kernel.shape[1]
        shapes["conv5_out"] = m.conv5.kernel.shape[-1]
        return m(x, tap=tap)

    jax.eval_shape(forward, jax.ShapeDtypeStruct((1, 227, 227, 3), np.float32))    # shapes only, nothing run
    conv1 = (227 - 11) // 4 + 1
    p1 = zr.caffe_pooled(conv1)
    p2 = zr.caffe_pooled(p1)
    p5 = zr.caffe_pooled(p2)
    assert (conv1, p1, p2, p5) == (55, 27, 13, 6)
    assert shapes["conv1"][1:3] == (conv1, conv1) and shapes["conv2"][1:3] == (p1, p1)
    assert shapes["conv3"][1:3] == (p2, p2) and shapes["conv5"][1:3] == (p2, p2)
    assert shapes["fc6_in"] == p5 * p5 * 2 * shapes["conv5_out"]


def test_bvlc_mean_image_and_bgr_through_the_tools(tmp_path, capsys):
    """The tools' photo path on an imported bvlc net: the photo fitted to 256 x 256, Caffe's mean image
    (BGR, 3 x 256 x 256) subtracted at the crop, the centre 227 crop at offset 14, as Caffe's test-time data
    layer; the model input is its RGB version (conv1's channels were reversed for it)."""
    from alexnet_jax.data import decode_images
    from alexnet_jax.restore import restore_workdir as restore
    from alexnet_jax.tools import _images

    mean_bgr = np.random.default_rng(3).uniform(60, 160, (3, 256, 256)).astype(np.float32)
    files = write_bvlc(tmp_path, zr.bvlc_blobs(SMALL_W, 1000), mean=mean_bgr)
    import_bvlc(files, tmp_path / "wd", capsys)
    pics = photos(tmp_path / "photos", sizes=((300, 400), (640, 480)))
    r = restore(str(tmp_path / "wd"))
    got = _images.load_inputs(r, images=[str(p) for p in pics]).x
    stored = decode_images("alexnet", [p.read_bytes() for p in pics]).astype(np.float64)   # (N, 256, 256, RGB)
    want_bgr = stored[..., ::-1].transpose(0, 3, 1, 2) - mean_bgr[None]
    want_bgr = want_bgr[:, :, 14:14 + 227, 14:14 + 227]
    np.testing.assert_allclose(got, want_bgr[:, ::-1].transpose(0, 2, 3, 1), rtol=0, atol=1e-4)


def favouring(first: int, second: int):
    """Small bvlc blobs whose logits ignore the image: fc8's bias ranks class `first`, then `second`."""
    blobs = zr.bvlc_blobs(SMALL_W, 1000)
    w8, b8 = blobs["fc8"]
    b8 = np.zeros_like(b8)
    b8[[first, second]] = (10.0, 9.0)
    blobs["fc8"] = (np.zeros_like(w8), b8)
    return blobs


def test_bvlc_classes_in_sorted_wnid_order(tmp_path, capsys):
    """Caffe's label i is line i of synset_words.txt, the ILSVRC-2012 wnids sorted (n01440764 tench first,
    n15075141 toilet tissue last): TFDS' label order.  A net whose fc8 favours row i predicts wnid i."""
    from alexnet_jax.tools._images import imagenet_synsets

    wnids = imagenet_synsets()
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert (wnids[0], wnids[-1]) == ("n01440764", "n15075141")
    import_bvlc(write_bvlc(tmp_path, favouring(3, 997)), tmp_path / "wd", capsys)
    pics = photos(tmp_path / "photos", sizes=((300, 300),))
    rc, out, err = cli(["predict", "--workdir", tmp_path / "wd", pics[0]], capsys)
    assert rc == 0, err
    top = json.loads(out.strip().splitlines()[-1])["predictions"][0]["top"]
    assert [t["id"] for t in top[:2]] == [wnids[3], wnids[997]]


@pytest.mark.slow
def test_imported_net_evaluates_on_a_prepared_store(tmp_path, capsys):
    """`eval` on an imported net reads a prepared imagenet2012 store with the net's preprocessing, and its
    labels are the dataset's: fc8 favouring row 1 (n01443537) then row 0 (n01440764) scores top-1 = the
    share of n01443537 images and top-5 = 1 on a validation split of those two classes."""
    from PIL import Image

    from alexnet_jax.data import prepare

    rng = np.random.default_rng(0)
    src = tmp_path / "ilsvrc"
    for split, per_class in (("train", 1), ("val", 3)):
        for w in ("n01440764", "n01443537"):
            d = src / split / w
            d.mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 255, (rng.integers(260, 300), rng.integers(260, 340), 3), np.uint8)
                Image.fromarray(arr).save(d / f"{w}_{i}.JPEG", quality=85)
    prepare("imagenet2012", str(src), str(tmp_path / "tfds"))
    import_bvlc(write_bvlc(tmp_path, favouring(1, 0)), tmp_path / "wd", capsys)
    rc, out, err = cli(["eval", "--workdir", tmp_path / "wd", "--data-dir", tmp_path / "tfds"], capsys)
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert (res["examples"], res["top1"], res["top5"], res["split"]) == (6, 0.5, 1.0, "validation")


def test_filters_per_column_on_imported_bvlc(tmp_path, capsys):
    """`filters` on an imported bvlc net scores conv1's colour specificity per column (Figure 3): Caffe's
    kernels 0..c-1 are column 0, c..2c-1 column 1, and their BGR channels arrive as RGB."""
    blobs = zr.bvlc_blobs(SMALL_W, 1000)
    w1, b1 = blobs["conv1"]
    w1 = w1.copy()
    c = w1.shape[0] // 2
    rng = np.random.default_rng(5)
    grey = rng.standard_normal((c, 1, 11, 11)).astype(np.float32)
    w1[:c] = np.repeat(grey, 3, axis=1)                     # column 0: the same pattern in B, G and R
    w1[c:] = 0
    pattern = rng.standard_normal((c, 11, 11)).astype(np.float32)
    w1[c:, 2] = pattern - pattern.mean(axis=(1, 2), keepdims=True)   # column 1: red only (BGR index 2)
    blobs["conv1"] = (w1, b1)
    import_bvlc(write_bvlc(tmp_path, blobs), tmp_path / "wd", capsys)
    rc, out, err = cli(["filters", "--workdir", tmp_path / "wd"], capsys)
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert [col["kernels"] for col in res["columns"]] == [c, c]
    assert res["column_scores"][0] == pytest.approx(0.0, abs=1e-9)
    assert res["column_scores"][1] == pytest.approx(2 / 3, abs=1e-6)   # a zero-mean single-channel kernel
    from alexnet_jax.restore import restore_workdir as restore

    k = np.asarray(restore(str(tmp_path / "wd")).model.conv1.kernel[...])   # (columns, kh, kw, RGB, out)
    red = w1[c:, 2].transpose(1, 2, 0)                                        # (kh, kw, out)
    assert np.abs(k[1, :, :, 1:]).max() == 0 and np.array_equal(k[1, :, :, 0], red)


def _bvlc_case(tmp_path, case: str):
    """Files for one bad-input case: (argv without --workdir, words the error must contain)."""
    pytest.importorskip("google.protobuf")
    blobs = zr.bvlc_blobs(SMALL_W, 1000)
    model, proto, mean = write_bvlc(tmp_path / "good", blobs)
    if case == "caffenet":            # pool before norm: bvlc_reference_caffenet, another architecture
        proto.write_text(zr.bvlc_deploy(SMALL_W, 1000, caffenet=True))
        return [model, "--deploy", proto, "--mean", mean], ["is Pooling where bvlc_alexnet has LRN"]
    if case == "vgg_like":            # one more conv layer
        text = zr.bvlc_deploy(SMALL_W, 1000).replace('bottom: "pool5"', 'bottom: "conv6"')
        extra = ('layer {\n  name: "conv6"\n  type: "Convolution"\n  bottom: "pool5"\n  top: "conv6"\n'
                 '  convolution_param {\n    num_output: 16\n    kernel_size: 1\n  }\n}\n')
        proto.write_text(text.replace('layer {\n  name: "fc6"', extra + 'layer {\n  name: "fc6"'))
        return [model, "--deploy", proto, "--mean", mean], ["compute layers", "not the bvlc_alexnet architecture"]
    if case == "missing_fc8":
        del blobs["fc8"]
        model.write_bytes(zr.caffemodel_bytes(blobs, "V2"))
        return [model, "--deploy", proto, "--mean", mean], ["no weights for layer(s) fc8"]
    if case == "shape":               # conv2's weights of a net without groups
        w2, b2 = blobs["conv2"]
        blobs["conv2"] = (np.zeros((w2.shape[0], w2.shape[1] * 2, 5, 5), np.float32), b2)
        model.write_bytes(zr.caffemodel_bytes(blobs, "V2"))
        return [model, "--deploy", proto, "--mean", mean], ["layer conv2 weights has shape (16, 6, 5, 5)",
                                                             "needs (16, 3, 5, 5)"]
    if case == "lrn":
        proto.write_text(zr.bvlc_deploy(SMALL_W, 1000).replace("alpha: 0.0001", "alpha: 0.001"))
        return [model, "--deploy", proto, "--mean", mean], ["norm1", "alpha"]
    if case == "truncated_model":
        data = model.read_bytes()
        model.write_bytes(data[: len(data) * 3 // 4])
        return [model, "--deploy", proto, "--mean", mean], ["cut short"]
    if case == "truncated_mean":
        data = mean.read_bytes()
        mean.write_bytes(data[: len(data) // 2])
        return [model, "--deploy", proto, "--mean", mean], ["cut short"]
    if case == "mean_size":
        mean.write_bytes(zr.binaryproto_bytes(np.zeros((3, 227, 227), np.float32)))
        return [model, "--deploy", proto, "--mean", mean], ["227 x 227 mean image", "256 x 256"]
    if case == "not_prototxt":
        proto.write_bytes(model.read_bytes()[:200])
        return [model, "--deploy", proto, "--mean", mean], ["not protobuf text format"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["caffenet", "vgg_like", "missing_fc8", "shape", "lrn", "truncated_model",
                                  "truncated_mean", "mean_size", "not_prototxt"])
def test_caffe_bad_files_are_one_error_line(tmp_path, capsys, case):
    argv, words = _bvlc_case(tmp_path, case)
    wd = tmp_path / "wd"
    rc, _, err = cli(["import", "caffe", *argv, "--workdir", wd], capsys)
    assert_refused(rc, err, wd, *words)


def test_import_refuses_a_used_workdir(tmp_path, capsys):
    files = write_bvlc(tmp_path, zr.bvlc_blobs(SMALL_W, 1000))
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "keep.txt").write_text("mine")
    model, proto, mean = files
    rc, _, err = cli(["import", "caffe", model, "--deploy", proto, "--mean", mean, "--workdir", wd], capsys)
    assert rc == 2 and "not empty" in err and sorted(os.listdir(wd)) == ["keep.txt"]


def test_config_rules_for_imported_nets():
    from alexnet_jax.config import Config, ConfigError

    ok = dict(dataset="imagenet2012", augment="alexnet", num_classes=1000)
    Config(model="alexnet", lrn="caffe", preprocess="caffe", init="paper", **ok).validate()
    Config(model="alexnet_owt", preprocess="torchvision", **ok).validate()
    for bad, words in [(dict(model="alexnet_owt", lrn="caffe"), "lrn=caffe"),
                       (dict(model="alexnet", preprocess="torchvision"), "preprocess=torchvision"),
                       (dict(model="alexnet_owt", preprocess="torchvision", init="paper"), "init=paper"),
                       (dict(model="alexnet", preprocess="caffe", init="he"), "init=he"),
                       (dict(model="alexnet", preprocess="caffe", augment="cifar"), "augment=alexnet")]:
        kw = dict(ok, **bad)
        with pytest.raises(ConfigError, match=words):
            Config(**kw).validate()


# ================================================================================================
# torchvision (needs torch for the reference)
# ================================================================================================
def torchvision_net(width: float, num_classes: int = 1000, seed: int = 0, fc8_scale: float = 10.0):
    """The reference net with PyTorch's default random weights, fc8's weights scaled by `fc8_scale` so that
    its logits depend on the image more than on fc8's bias (the classes separate)."""
    import torch

    torch.manual_seed(seed)
    m = zr.torchvision_alexnet(width, num_classes).eval()
    with torch.no_grad():
        m.classifier[6].weight.mul_(fc8_scale)
    return m


def save_pth(model, path: Path, fmt: str = "zip") -> Path:
    import torch

    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=fmt == "zip")
    return path


def reference_on(model, images) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    x = np.stack([zr.torchvision_input(Path(p).read_bytes()) for p in images])
    return zr.torchvision_taps(model, x)


@needs_torch
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_torchvision_import_equals_reference_layer_by_layer(tmp_path, capsys, fmt):
    """torchvision's alexnet structure (width 1/4 here; full size in the slow test) with random weights,
    saved by torch.save in either format, imported: every layer's output on photos of several shapes, each
    preprocessed by torchvision's transform written out on PIL, equals ours (the tools' own preprocessing)
    within 1e-5 relative."""
    net = torchvision_net(0.25)
    pth = save_pth(net, tmp_path / f"alexnet_{fmt}.pth", fmt)
    rc, out, err = cli(["import", "torchvision", pth, "--workdir", tmp_path / "wd"], capsys)
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert (res["model"], res["width"], res["num_classes"], res["pth_format"]) == ("alexnet_owt", 0.25, 1000, fmt)
    pics = photos(tmp_path / "photos")
    ref_logits, ref = reference_on(net, pics)
    logits, ours, _ = run_ours(tmp_path / "wd", pics)
    for layer in zr.TORCHVISION_TAPS:
        assert rel(ours[layer], ref[layer]) <= TOL, (layer, rel(ours[layer], ref[layer]))
    assert rel(logits, ref_logits) <= TOL


def _owt_workdir(tmp_path, init: str, width: float = 0.25, num_classes: int = 10) -> Path:
    """An alexnet_owt workdir as a run here writes it (config, step-0 checkpoint through the project's
    checkpointer), its weights random at each layer's fan-in scale; init=paper nets read unscaled pixels."""
    from flax import nnx

    from alexnet_jax.config import Config
    from alexnet_jax.trainer import abstract_model_of
    from alexnet_jax.zoo import write_workdir

    config = Config(model="alexnet_owt", num_classes=num_classes, input_size=224, width=width, init=init,
                    dataset="imagenet2012", augment="alexnet", batch_size=8, seed=3)
    rng = np.random.default_rng(8)
    params = {}
    for p, v in nnx.to_flat_state(nnx.state(abstract_model_of(config), nnx.Param)):
        name, shape = ".".join(map(str, p)), tuple(v.shape)
        fan_in = int(np.prod(shape[:-1])) if name.endswith("kernel") else 1
        scale = np.sqrt(2.0 / fan_in) * (1 / 58.0 if name == "conv1.kernel" and init == "paper" else 1.0)
        params[name] = (rng.standard_normal(shape) * (scale if name.endswith("kernel") else 0.1)).astype(np.float32)
    return Path(write_workdir(str(tmp_path / f"owt_{init}"), config, params, {"source": "test"}))


@needs_torch
@pytest.mark.parametrize("init", ["native", "paper"])
def test_export_torchvision_gives_the_same_logits(tmp_path, capsys, init):
    """An alexnet_owt made here, exported, loaded into torchvision's structure: the same logits on the same
    inputs (init=paper nets read unscaled pixels: conv1 takes torchvision's std into its weights)."""
    import torch

    wd = _owt_workdir(tmp_path, init)
    rc, out, err = cli(["export", "torchvision", "--workdir", wd, tmp_path / "out.pth"], capsys)
    assert rc == 0, err
    ref = zr.torchvision_alexnet(0.25, 10).eval()
    ref.load_state_dict(torch.load(tmp_path / "out.pth", weights_only=True))
    pics = photos(tmp_path / "photos", sizes=((300, 400), (480, 320)))
    ref_logits, _ = reference_on(ref, pics)
    from alexnet_jax.restore import restore_workdir as restore
    from alexnet_jax.tools import _cli

    r = restore(str(wd))
    x = np.stack([zr.torchvision_input(p.read_bytes()) for p in pics]).transpose(0, 2, 3, 1)
    centred = x * (255 * np.array(zr.TORCHVISION_STD, np.float32))      # what our pipeline feeds the model
    logits, _ = _cli.run_model(r, centred.astype(np.float32))
    assert rel(logits, ref_logits) <= TOL


@needs_torch
def test_round_trip_is_bitwise(tmp_path, capsys):
    """import -> export -> the same state_dict bit for bit; importing that gives the same checkpoint arrays."""
    import torch

    from alexnet_jax.restore import restore_workdir as restore

    net = torchvision_net(0.25, num_classes=17)
    src = save_pth(net, tmp_path / "src.pth")
    assert cli(["import", "torchvision", src, "--workdir", tmp_path / "a"], capsys)[0] == 0
    assert cli(["export", "torchvision", "--workdir", tmp_path / "a", tmp_path / "back.pth"], capsys)[0] == 0
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    orig = net.state_dict()
    assert list(back) == list(orig)
    for k in orig:
        assert back[k].dtype == orig[k].dtype and torch.equal(back[k], orig[k]), k
    assert cli(["import", "torchvision", tmp_path / "back.pth", "--workdir", tmp_path / "b"], capsys)[0] == 0
    import jax

    pa, pb = (jax.device_get(restore(str(tmp_path / n)).state.params) for n in ("a", "b"))
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


@needs_torch
@pytest.mark.parametrize("case", ["missing", "extra", "shape", "module", "truncated_zip", "truncated_legacy"])
def test_torchvision_bad_files_are_one_error_line(tmp_path, capsys, case):
    import torch

    net = torchvision_net(0.25)
    sd = net.state_dict()
    p = tmp_path / f"{case}.pth"
    words: list[str]
    if case == "missing":
        del sd["classifier.4.bias"]
        torch.save(sd, p)
        words = ["missing classifier.4.bias"]
    elif case == "extra":                  # a deeper features stack: another architecture
        sd["features.12.weight"] = torch.zeros(3)
        torch.save(sd, p)
        words = ["has keys torchvision's alexnet does not: features.12.weight"]
    elif case == "shape":
        sd["classifier.1.weight"] = torch.zeros(1024, 100)
        torch.save(sd, p)
        words = ["classifier.1.weight has shape (1024, 100), expected (1024, 2304)"]
    elif case == "module":                 # a pickled module, not a state_dict
        torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), p)
        words = ["refers to", "model.state_dict()"]
    else:
        fmt = case.split("_")[1]
        save_pth(net, p, fmt)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        words = ["cut short"]
    wd = tmp_path / "wd"
    rc, _, err = cli(["import", "torchvision", p, "--workdir", wd], capsys)
    assert_refused(rc, err, wd, *words)


def test_export_refuses_other_models(tmp_path, capsys):
    pytest.importorskip("torch")
    files = write_bvlc(tmp_path, zr.bvlc_blobs(SMALL_W, 1000))
    import_bvlc(files, tmp_path / "wd", capsys)
    rc, _, err = cli(["export", "torchvision", "--workdir", tmp_path / "wd", tmp_path / "x.pth"], capsys)
    assert rc == 2 and "model=alexnet" in err and not (tmp_path / "x.pth").exists()


# ================================================================================================
# Full size (slow)
# ================================================================================================
@pytest.mark.slow
@needs_torch
@needs_samples
def test_full_size_torchvision_import_layer_by_layer_and_top5_on_photos(tmp_path, capsys):
    """torchvision's alexnet at full size (61,100,840 parameters, PyTorch's random init, fc8's bias set so
    the classes separate): per-layer relative difference <= 1e-5 and the same top-5 classes, in order, on
    the 100 sample photos."""
    from alexnet_jax.data import read_image_files

    net = torchvision_net(1.0, fc8_scale=1.0)
    assert sum(p.numel() for p in net.parameters()) == 61_100_840

    items = read_image_files([str(SAMPLES)])
    folder = tmp_path / "photos"
    folder.mkdir()
    pics = []
    for name, data in items:
        p = folder / Path(name).name
        p.write_bytes(data)
        pics.append(p)
    assert len(pics) == 100
    zr.separate_classes(net, np.stack([zr.torchvision_input(p.read_bytes()) for p in pics]))
    pth = save_pth(net, tmp_path / "alexnet.pth")
    assert cli(["import", "torchvision", pth, "--workdir", tmp_path / "wd"], capsys)[0] == 0
    ref_logits, ref = reference_on(net, pics)
    logits, ours, _ = run_ours(tmp_path / "wd", pics)
    for layer in zr.TORCHVISION_TAPS:
        assert rel(ours[layer], ref[layer]) <= TOL, (layer, rel(ours[layer], ref[layer]))
    top_ours = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    top_ref = np.argsort(-ref_logits, axis=1, kind="stable")[:, :5]
    assert np.array_equal(top_ours, top_ref)
    assert len(set(top_ref[:, 0].tolist())) >= 20, "the classes do not separate: the check would be vacuous"


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["V2", "V1"])
def test_full_size_bvlc_import_exact(tmp_path, capsys, fmt):
    blobs = zr.bvlc_blobs(1.0, 1000, seed=4)
    res = import_bvlc(write_bvlc(tmp_path, blobs, fmt, width=1.0), tmp_path / "wd", capsys)
    assert res["parameters"] == 60_965_224 and res["caffemodel_format"] == fmt
    x_bgr = np.random.default_rng(6).uniform(-120, 120, (2, 3, 227, 227))
    ref = zr.caffe_forward(blobs, x_bgr)
    ours, _ = caffe_layers_of_ours(tmp_path / "wd", x_bgr)
    for layer in ref:
        assert rel(ours[layer], ref[layer]) <= TOL, (layer, rel(ours[layer], ref[layer]))
