"""The mesh proof: the two-column AlexNet on 1x1, 1x2, 2x1 and 2x2 meshes is the same computation, its
communication is exactly the paper's (K12 Fig. 2; K12 Fig. 2, §3.5), parameters live on their column's
device, checkpoints move between meshes, one-column nets run data-parallel, and bad shapes fail clearly.

Multi-device runs need forced CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=4), which
must be set before JAX starts its backend.  Other test modules start JAX in the pytest process with
whatever devices it has, so every multi-device computation here runs in a subprocess: this file run
as a script (`python tests/test_parallel.py TASK OUTDIR [JSON]`) performs one task and writes its
results to OUTDIR; the tests only read them.  A task used by several tests runs once per pytest run
(shared across pytest-xdist workers through a lock file).  What needs no devices (the shape errors that
parallel.resolve_mesh_shape and parallel.plan raise) is checked in this process.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MESHES = [(1, 1), (1, 2), (2, 1), (2, 2)]
COLUMN_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
EXCHANGES = ("conv3", "fc6", "fc7", "fc8")
LOCAL_ONLY = ("conv1", "conv2", "conv4", "conv5", "lrn1", "lrn2", "pool5")
PAPER_FLOATS = {"conv3": 21_632, "fc6": 4_608, "fc7": 2_048, "fc8": 2_048}   # K12 Fig. 2, §3.5
SMALL = dict(model="alexnet", num_classes=10, input_size=64, width=0.125, batch_size=8, lr=0.01, seed=0)
TIMEOUT = 600
T0 = time.perf_counter()


# ================================================================================================
# Parent side: run a task in a subprocess with 4 forced CPU devices
# ================================================================================================
JAX_CACHE: list[str] = []   # set by the `_jax_cache` fixture


@pytest.fixture(scope="session", autouse=True)
def _jax_cache(request, tmp_path_factory):
    """A persistent XLA compilation cache for the subprocesses (pytest's cache dir, else a temp dir):
    the second run of this file compiles almost nothing."""
    cache = getattr(request.config, "cache", None)
    JAX_CACHE[:] = [str(cache.mkdir("jax_compile_cache") if cache else tmp_path_factory.mktemp("jax_cache"))]


def run_task(task: str, out: Path, devices: int = 4, **kw) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    # LLVM optimisation off: compiles 3-8x faster on CPU (the init jit drops from ~10 s to ~1 s); these
    # tests compare meshes under the same flags and time nothing
    flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if JAX_CACHE:
        env.update(JAX_COMPILATION_CACHE_DIR=JAX_CACHE[0], JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    p = subprocess.run([sys.executable, __file__, task, str(out), json.dumps(kw)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=TIMEOUT)
    if p.returncode != 0:
        raise AssertionError(f"task {task} failed (rc {p.returncode}):\n{p.stdout[-3000:]}\n"
                             f"{p.stderr[-6000:]}")
    return json.loads((out / "result.json").read_text())


@contextlib.contextmanager
def _locked(path: Path):
    import fcntl
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def shared_task(tmp_path_factory, name: str, task: str, **kw) -> tuple[dict, Path]:
    """Run `task` once per pytest run, even when several xdist workers ask for it."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        out = tmp_path_factory.getbasetemp() / name
        return (json.loads((out / "result.json").read_text()) if (out / "result.json").exists()
                else run_task(task, out, **kw)), out
    shared = tmp_path_factory.getbasetemp().parent      # common to all workers of this run
    out = shared / name
    with _locked(shared / f"{name}.lock"):
        if not (out / "result.json").exists():
            run_task(task, out, **kw)
    return json.loads((out / "result.json").read_text()), out


@pytest.fixture(scope="module")
def meshes8(tmp_path_factory):
    return shared_task(tmp_path_factory, "meshes8", "meshes", steps=8)


def _params(out: Path, d: int, m: int) -> dict[str, np.ndarray]:
    with open(out / f"params_{d}x{m}.pkl", "rb") as f:
        return pickle.load(f)


def _assert_meshes_agree(res: dict, out: Path, steps: int, tol: float = 1e-5) -> None:
    ref = np.asarray(res["losses"]["1x1"])
    assert len(ref) == steps and np.all(np.isfinite(ref))
    p_ref = _params(out, 1, 1)
    for d, m in MESHES[1:]:
        got = np.asarray(res["losses"][f"{d}x{m}"])
        rel = np.max(np.abs(got - ref) / np.abs(ref))
        assert rel <= tol, f"{d}x{m}: losses differ from 1x1 by {rel:.2e} relative"
        p = _params(out, d, m)
        assert p.keys() == p_ref.keys()
        worst = max(float(np.max(np.abs(p[k] - p_ref[k]))) for k in p_ref)
        assert worst <= tol, f"{d}x{m}: final parameters differ from 1x1 by {worst:.2e}"


# ================================================================================================
# Equivalence
# ================================================================================================
def test_meshes_train_identically_8_steps(meshes8):
    res, out = meshes8
    _assert_meshes_agree(res, out, 8)


@pytest.mark.slow
def test_meshes_train_identically_32_steps(tmp_path):
    res = run_task("meshes", tmp_path / "m32", steps=32)
    _assert_meshes_agree(res, tmp_path / "m32", 32)


@pytest.mark.slow
def test_meshes_train_identically_with_device_augmentation(tmp_path):
    """Real loader + augmentation on the device (random crops and flips from each example's stream
    position), dropout on: 1x1, 1x2, 2x1 and 2x2 see the same images and train to the same numbers.

    Slow (about 20 s on 2 cores, four meshes with the real loader): the default suite keeps the meshes'
    agreement (test_meshes_train_identically_8_steps); this adds the augmentation to it."""
    res = run_task("augmeshes", tmp_path, steps=4)
    ref = np.asarray(res["losses"]["1x1"])
    assert len(ref) == 4 and np.all(np.isfinite(ref))
    for name, got in res["losses"].items():
        assert np.max(np.abs(np.asarray(got) - ref) / np.abs(ref)) <= 1e-5, (name, got, ref)
        assert res["images_max_diff"][name] == 0.0, name           # the augmented batch itself: bitwise
        assert res["param_max_diff"][name] <= 1e-5, name


def test_caffe_lrn_on_the_column_split(tmp_path):
    """lrn=caffe (bvlc_alexnet's LRN, across both columns' maps): the 1x2 column split trains as one device
    does, and its forward pass gathers the columns' maps at lrn1 and lrn2 besides the paper's four exchanges."""
    res = run_task("caffe_lrn", tmp_path / "caffe_lrn", steps=4)
    ref, got = np.asarray(res["losses"]["1x1"]), np.asarray(res["losses"]["1x2"])
    assert len(ref) == 4 and np.max(np.abs(got - ref) / np.abs(ref)) <= 1e-5, (got, ref)
    assert res["param_max_diff"] <= 1e-5
    cs = [c for c in res["forward"]["collectives"] if c["group_size"] > 1]
    assert {c["op"] for c in cs} == {"all-gather"} and {c["axis"] for c in cs} == {"model"}
    assert sorted(c["layer"] for c in cs) == sorted((*EXCHANGES, "lrn1", "lrn2"))


# ================================================================================================
# Communication
# ================================================================================================
def _check_forward(rep: dict) -> None:
    cs = [c for c in rep["collectives"] if c["group_size"] > 1]
    assert [c["op"] for c in cs] == ["all-gather"] * 4, cs
    assert {c["axis"] for c in cs} == {"model"}
    assert sorted(c["layer"] for c in cs) == sorted(EXCHANGES)


def _check_train(rep: dict, param_sizes: list[int]) -> None:
    cs = [c for c in rep["collectives"] if c["group_size"] > 1]
    model = [c for c in cs if c["axis"] == "model"]
    data = [c for c in cs if c["axis"] == "data"]
    assert len(model) + len(data) == len(cs), f"collectives over both axes at once: {cs}"
    # along `model`: the 4 forward all-gathers and, in the backward pass, their transposes only
    fwd = [c for c in model if not c["backward"]]
    bwd = [c for c in model if c["backward"]]
    assert sorted((c["op"], c["layer"]) for c in fwd) == sorted(("all-gather", x) for x in EXCHANGES)
    assert {c["layer"] for c in bwd} <= set(EXCHANGES) and bwd, bwd
    assert not {c["layer"] for c in model} & set(LOCAL_ONLY)
    # fc8 is replicated: the gradient of its gathered input needs no exchange; conv3/fc6/fc7 reduce-scatter
    # back exactly what they gathered (each device gets the other column's gradient for its own maps)
    assert sorted((c["op"], c["layer"]) for c in bwd) == [("reduce-scatter", x) for x in EXCHANGES[:3]]
    for c in bwd:
        g = next(f for f in fwd if f["layer"] == c["layer"])
        assert c["sent"] == g["sent"], (c, g)
    # along `data`: one gradient all-reduce per parameter (+ scalar metrics), nothing else
    assert {c["op"] for c in data} <= {"all-reduce"}
    grads = [c for c in data if _dims(c["shape"])]                   # non-scalar buffers
    assert sorted(int(np.prod(_dims(c["shape"]))) for c in grads) == sorted(param_sizes)
    assert all(c["backward"] and c["layer"] for c in grads), grads
    assert len(data) - len(grads) <= 4, "only scalar metrics (loss, accuracy) besides the gradients"


def _dims(shape: str) -> list[int]:
    """'f32[2,4,7]' -> [2, 4, 7]; 'f32[]' -> []."""
    return [int(v) for v in shape.split("[")[1].rstrip("]").split(",") if v]


def test_communication_small_model(meshes8):
    res, _ = meshes8
    for name in ("1x2", "2x2"):
        _check_forward(res["comms"][name]["forward"])
        sizes = res["comms"][name]["param_sizes_per_device"]
        rep = res["comms"][name]["train"]
        _check_train(rep, sizes if name == "2x2" else [])
        if name == "1x2":   # no data axis: its degenerate (size-1) all-reduces move nothing
            assert not [c for c in rep["collectives"] if c["axis"] == "data"]
            assert all(c["sent"] == 0 for c in rep["collectives"] if c["axis"] == "none")


@pytest.mark.slow
def test_communication_bytes_match_paper_full_size(tmp_path):
    """Width 1.0, 227x227: compiled only (never run).  An all-gather's result holds both columns' maps;
    each device sends its own half and receives the other's: the paper's floats per image per direction.
    Slow (a full-width compile): the default suite has the paper's per-image floats at full size from the
    model's exchange hook (test_alexnet.py::test_exchange_called_four_times_full_size) and the compiled
    collectives of the small net (test_communication_small_model)."""
    res = run_task("fullsize", tmp_path)
    for name, batch in (("1x2", 2), ("2x2", 4)):
        per_image = res[name]["per_image"]
        images_per_gather = batch // res[name]["data"]
        for layer, floats in PAPER_FLOATS.items():
            row = per_image[layer]
            assert row["result_bytes"] == 2 * floats * 4, (name, layer, row)     # both halves, float32
            assert row["sent_bytes"] == floats * 4, (name, layer, row)           # one half per direction
            assert row["shape"][:2] == [2, images_per_gather]
        assert set(per_image) == set(PAPER_FLOATS)


HLO_FORMS = """
  %ag-start = (f32[4,8]{1,0}, f32[8,8]{1,0}) all-gather-start(f32[4,8]{1,0} %x), channel_id=1, replica_groups=[2,2]<=[4], dimensions={0}, use_global_device_ids=true, metadata={op_name="jit(f)/shard_map/conv3/all_gather"}
  %ag-done = f32[8,8]{1,0} all-gather-done((f32[4,8]{1,0}, f32[8,8]{1,0}) %ag-start)
  %ar-start = f32[10]{0} all-reduce-start(f32[10]{0} %y), channel_id=2, replica_groups=[2,2]<=[2,2]T(1,0), use_global_device_ids=true, to_apply=%add, metadata={op_name="jit(f)/transpose(jvp())/fc6/psum"}
  %ar-done = f32[10]{0} all-reduce-done(f32[10]{0} %ar-start)
  %cp = (f32[4]{0}, f32[4]{0}, u32[], u32[]) collective-permute-start(f32[4]{0} %z), source_target_pairs={{0,1},{1,0}}
  %rs = f32[2,3]{1,0} reduce-scatter(f32[4,3]{1,0} %w), replica_groups={{0,1},{2,3}}, dimensions={0}, to_apply=%add
  %all-reduce.3 = (f32[5]{0}, bf16[2,2]{1,0}) all-reduce(%a, %b), replica_groups={{0,2},{1,3}}, to_apply=%add, metadata={op_name="jit(f)/transpose(jvp())/(conv1/psum:lrn1/psum)"}
  ROOT %t = (f32[8,8]{1,0}) tuple(%ag-done)
"""  # noqa: E501  (GPU-style async and iota forms, written by hand)


def test_comms_parses_hlo_forms():
    """comms.analyze on the HLO forms GPUs emit: async pairs counted once, iota and explicit replica groups,
    collective-permute pairs, combined (tuple) all-reduces split per buffer with their own layers."""
    from alexnet_jax import comms
    rep = comms.analyze(HLO_FORMS, {"data": 2, "model": 2})
    got = [(c.op, c.shape, c.axis, c.layer, c.backward, c.sent) for c in rep.collectives]
    assert got == [("all-gather", "f32[8,8]", "model", "conv3", False, 128.0),
                   ("all-reduce", "f32[10]", "data", "fc6", True, 40.0),
                   ("collective-permute", "f32[4]", "model", None, False, 16.0),
                   ("reduce-scatter", "f32[2,3]", "model", None, False, 24.0),
                   ("all-reduce", "f32[5]", "data", "conv1", True, 20.0),
                   ("all-reduce", "bf16[2,2]", "data", "lrn1", True, 8.0)]
    assert rep.sent_by_axis() == {"model": 168.0, "data": 68.0}
    per_image = comms.bytes_per_image(rep, batch=4)            # 2 images per data replica
    assert per_image[("model", "conv3", "all-gather")] == 64.0
    assert "| model | conv3 | fwd | all-gather | f32[8,8] | 256 | 2 | 128 |" in comms.traffic_table(rep)


# ================================================================================================
# Where every parameter lives
# ================================================================================================
def test_parameter_shardings_1x2(meshes8):
    res, _ = meshes8
    shard = res["shardings_1x2"]
    assert set(shard["params"]) and len(shard["momentum"]) == len(shard["params"])
    for path, info in shard["params"].items():
        layer = path.split("/")[0]
        if layer in COLUMN_LAYERS:
            assert info["spec"][0] == "model" and all(s is None for s in info["spec"][1:]), (path, info)
            # device 0 holds column 0, device 1 column 1, equal to the one-device model's slices
            assert info["shards"] == [[0, 0, 1], [1, 1, 2]], (path, info)
            assert info["max_diff_vs_1x1_slice"] == 0.0
        else:
            assert layer == "fc8" and all(s is None for s in info["spec"]), (path, info)
            assert info["replicated"] and info["max_diff_vs_1x1_slice"] == 0.0
    for path, (vspec, pspec, same) in shard["momentum"].items():
        assert same and vspec == pspec, (path, vspec, pspec)


# ================================================================================================
# Checkpoints move between meshes
# ================================================================================================
def test_checkpoints_move_between_meshes(tmp_path):
    res = run_task("checkpoint", tmp_path)
    for name in ("1x2->1x1", "1x2->2x2", "2x2->1x2", "1x1->1x2"):
        r = res[name]
        assert r["max_abs_diff"] == 0.0 and r["leaves"] > 10, (name, r)
        assert r["shardings_match_target"], (name, r)
    assert res["1x2->2x2"]["conv1_kernel_spec"][0] == "model"
    assert res["1x2->1x1"]["continues"], "training continues from the restored state"


# ================================================================================================
# One-column nets are data-parallel over every device
# ================================================================================================
def test_one_column_models_data_parallel_2x2(tmp_path):
    res = run_task("onecolumn", tmp_path)
    for name in ("alexnet_owt", "lenet5"):
        r = res[name]
        assert r["batch_shard_rows"] == [r["batch"] // 4] * 4, r        # the batch is split 4 ways
        assert r["loss_max_rel_diff"] <= 1e-5 and r["param_max_abs_diff"] <= 1e-5, r
        assert r["collective_ops"] and set(r["collective_ops"]) <= {"all-reduce"}, r
        assert set(r["collective_axes"]) == {"data+model"}, r


# ================================================================================================
# Bad input fails clearly
# ================================================================================================
def test_bad_shapes_fail_clearly(tmp_path):
    """Meshes that do not fit the devices (parallel.resolve_mesh_shape, what make_mesh asks) and models or
    batches that do not fit a mesh (Trainer.build on a mesh of that shape) fail in this process, naming what
    to change; the user-facing path and a one-column model's plan need the 4 forced devices of a task."""
    from jax.sharding import AbstractMesh

    from alexnet_jax import parallel

    def message(fn) -> str:
        with pytest.raises(parallel.MeshError) as e:
            fn()
        return str(e.value)

    def mesh(d, m):
        return AbstractMesh((d, m), (parallel.DATA, parallel.MODEL))

    too_big = message(lambda: parallel.resolve_mesh_shape(4, 2, 4))
    assert "needs 8 devices but 4 are present" in too_big and "xla_force_host_platform_device_count=N" in too_big
    assert "batch_size 6 is not divisible by the 4 devices" in message(
        lambda: _trainer(_small_config(batch_size=6), mesh(4, 1)))
    assert "cannot split over mesh_model=3; use mesh_model 1 or 2" in message(
        lambda: _trainer(_small_config(), mesh(1, 3)))
    assert "mesh_model=3 needs a multiple of 3 devices, but 4 are present" in message(
        lambda: parallel.resolve_mesh_shape(-1, 3, 4))
    res = run_task("errors", tmp_path)
    assert "divisible" in res["train_batch_6_on_data_4"] and "multiple of 4" in res["train_batch_6_on_data_4"], res
    # a one-column model on a model axis of 2 stays data-parallel over both devices, and says so
    assert res["one_column_on_model_2"] == "mesh data=1 x model=2: one-column model: data-parallel over all 2 devices"


# ================================================================================================
# The column axis follows the devices (mesh_model=-1)
# ================================================================================================
def test_the_column_axis_follows_the_devices():
    """mesh_model=-1 (alexnet_cifar10's default): two columns over two devices when 2+ are free, one device
    otherwise."""
    from alexnet_jax import parallel
    from alexnet_jax.configs import get_config

    assert get_config("alexnet_cifar10").mesh_model == -1
    assert parallel.resolve_mesh_shape(-1, -1, 1) == (1, 1)
    assert parallel.resolve_mesh_shape(-1, -1, 2) == (1, 2)
    assert parallel.resolve_mesh_shape(-1, -1, 4) == (2, 2)
    assert parallel.resolve_mesh_shape(3, -1, 3) == (3, 1)      # the data axis leaves one device each
    assert parallel.resolve_mesh_shape(1, -1, 3) == (1, 1)      # 3 free devices: no even split of 2 columns


# ================================================================================================
# Child side: the tasks (run with forced host devices)
# ================================================================================================
def _small_config(**kw):
    from alexnet_jax.config import Config
    return Config(**dict(SMALL, **kw))


def _synthetic(config, n: int = 4, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    s, b, c = config.input_size, config.batch_size, 1 if config.model.startswith("lenet") else 3
    return [{"image": rng.normal(size=(b, s, s, c)).astype(np.float32),
             "label": rng.integers(0, config.num_classes, b).astype(np.int32)} for _ in range(n)]


def _flat(tree) -> dict[str, np.ndarray]:
    import jax
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]:
        keys = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path]
        out["/".join(str(k) for k in keys if k not in (None, "value"))] = np.asarray(leaf)
    return out


def _trainer(config, mesh, **kw):
    from alexnet_jax.trainer import Trainer
    return Trainer.build(config, mesh, steps_per_epoch=100, **kw)


def _train(config, mesh, batches, steps, trainer=None, state=None):
    """`steps` steps from `state` (default: a new trainer's initial state)."""
    trainer = _trainer(config, mesh) if trainer is None else trainer
    state = trainer.init() if state is None else state
    compiled = trainer.train_step.lower(state, trainer.global_batch(batches[0])).compile()
    losses = []
    for i in range(steps):
        state, metrics = compiled(state, trainer.global_batch(batches[i % len(batches)]))
        losses.append(float(metrics["loss"]))
    return state, losses, compiled, trainer


def _forward(trainer):
    """jit((params, extra, images) -> logits): the evaluation forward pass on the trainer's mesh."""
    import jax
    return jax.jit(lambda p, e, x: trainer.forward(p, e, x))


def task_meshes(out: Path, steps: int) -> dict:
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from alexnet_jax import comms, parallel
    config = _small_config()
    batches = _synthetic(config)
    res = {"losses": {}, "comms": {}, "shardings_1x2": {}}
    init_1x1 = None
    for d, m in MESHES:
        mesh = parallel.make_mesh(d, m)
        name = f"{d}x{m}"
        trainer = _trainer(config, mesh)
        st = trainer.init()
        if (d, m) == (1, 1):
            init_1x1 = _flat(st.params)
        elif (d, m) == (1, 2):      # read before training: the train step donates the state
            res["shardings_1x2"] = _sharding_report(st, trainer.tx, init_1x1)
        state, losses, compiled, trainer = _train(config, mesh, batches, steps, trainer, st)
        res["losses"][name] = losses
        print(f"{name}: {time.perf_counter() - T0:.1f} s", file=sys.stderr, flush=True)
        with open(out / f"params_{name}.pkl", "wb") as f:
            pickle.dump(_flat(state.params), f)
        if m == 2:
            x = jax.device_put(batches[0]["image"], NamedSharding(mesh, P("data")))
            fwd = _forward(trainer)
            res["comms"][name] = {
                "train": comms.analyze(compiled, mesh).to_dict(),
                "forward": comms.analyze(fwd.lower(state.params, state.extra, x).compile(), mesh).to_dict(),
                "param_sizes_per_device": [int(np.prod(x.addressable_shards[0].data.shape))
                                           for x in jax.tree.leaves(state.params)]}
    return res


def _sharding_report(state, tx, ref: dict) -> dict:
    import jax
    import optax
    params = {}
    for x, key in zip(jax.tree.leaves(state.params), _flat(state.params), strict=True):
        full = ref[key]
        rows = [s.index[0] if s.index else slice(None) for s in x.addressable_shards]
        shards = sorted([s.device.id, r.start or 0, full.shape[0] if r.stop is None else r.stop]
                        for s, r in zip(x.addressable_shards, rows, strict=True))
        diff = max(float(np.max(np.abs(np.asarray(s.data) - full[s.index]))) for s in x.addressable_shards)
        params[key] = {"spec": list(x.sharding.spec) + [None] * (x.ndim - len(x.sharding.spec)),
                       "shards": shards, "max_diff_vs_1x1_slice": diff,
                       "replicated": x.sharding.is_fully_replicated}
    momentum = {}

    def visit(v, p):
        momentum[len(momentum)] = (list(v.sharding.spec), list(p.sharding.spec),
                                   bool(v.sharding.is_equivalent_to(p.sharding, p.ndim)))
        return v

    optax.tree_utils.tree_map_params(tx, visit, state.opt_state, state.params,
                                     transform_non_params=lambda x: x)
    return {"params": params, "momentum": {str(k): v for k, v in momentum.items()}}


def task_caffe_lrn(out: Path, steps: int) -> dict:
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from alexnet_jax import comms, parallel
    config = _small_config(lrn="caffe")
    batches = _synthetic(config)
    res, params = {"losses": {}}, {}
    for d, m in ((1, 1), (1, 2)):
        mesh = parallel.make_mesh(d, m)
        state, losses, _, trainer = _train(config, mesh, batches, steps)
        res["losses"][f"{d}x{m}"] = losses
        params[m] = _flat(state.params)
    res["param_max_diff"] = max(float(np.max(np.abs(params[2][k] - params[1][k]))) for k in params[1])
    x = jax.device_put(batches[0]["image"], NamedSharding(mesh, P("data")))
    res["forward"] = comms.analyze(_forward(trainer).lower(state.params, state.extra, x).compile(), mesh).to_dict()
    return res


def task_fullsize(out: Path) -> dict:
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from alexnet_jax import comms, parallel
    from alexnet_jax.config import Config
    config = Config(model="alexnet", num_classes=1000, input_size=227, width=1.0)
    res = {}
    for d, m, batch in ((1, 2, 2), (2, 2, 4)):
        mesh = parallel.make_mesh(d, m)
        trainer = _trainer(config, mesh, batch_size=batch)
        abstract = trainer.abstract_state
        fwd = _forward(trainer)
        x = jax.ShapeDtypeStruct((batch, 227, 227, 3), jnp.float32, sharding=NamedSharding(mesh, P("data")))
        rep = comms.analyze(fwd.lower(abstract.params, abstract.extra, x).compile(), mesh)
        cs = [c for c in rep.collectives if c.group_size > 1]
        assert all(c.op == "all-gather" and c.axis == "model" for c in cs), cs
        images = batch / d
        res[f"{d}x{m}"] = {"data": d, "table": comms.traffic_table(rep, batch), "per_image": {
            c.layer: {"shape": _dims(c.shape),
                      "result_bytes": c.bytes / images, "sent_bytes": c.sent / images} for c in cs}}
    return res


def _tick(what: str) -> None:
    print(f"{what}: {time.perf_counter() - T0:.1f} s", file=sys.stderr, flush=True)


def task_checkpoint(out: Path) -> dict:
    import jax
    from jax.sharding import NamedSharding

    from alexnet_jax import checkpoint as ckpt_lib
    from alexnet_jax import parallel
    from alexnet_jax.restore import restore_workdir
    config = _small_config()
    batches = _synthetic(config)

    def save(workdir: Path, state, step: int, mesh):
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.replace(mesh_data=mesh.shape["data"],
                                                            mesh_model=mesh.shape["model"]).to_json())
        ck = ckpt_lib.Checkpointer(str(workdir / "checkpoints"))
        ck.save(step, state, {"data_state": ""})
        ck.close()
        return jax.device_get(state)

    def compare(saved, restored, mesh) -> dict:
        """Values equal to what was saved; each leaf laid out on `mesh` with its role's spec."""
        a, b, c = jax.tree.leaves(saved), jax.tree.leaves(restored), jax.tree.leaves(specs)
        diff = max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
                   for x, y in zip(a, jax.device_get(b), strict=True))
        same = all(y.sharding.is_equivalent_to(NamedSharding(mesh, s.sharding.spec), y.ndim)
                   for y, s in zip(b, c, strict=True))
        return {"max_abs_diff": diff, "leaves": len(a), "shardings_match_target": bool(same),
                "conv1_kernel_spec": list(restored.params["conv1"]["kernel"].sharding.spec)}

    res = {}
    mesh11, mesh12, mesh22 = parallel.make_mesh(1, 1), parallel.make_mesh(1, 2), parallel.make_mesh(2, 2)
    # train 3 steps on 1x2 and save
    state12, _, _, _ = _train(config, mesh12, batches, 3)
    specs = state12                                      # every leaf's spec, as created on a mesh
    saved = save(out / "run_1x2", state12, 3, mesh12)
    # restore on 1x1 and on 2x2 through restore_workdir (which targets the abstract state on that mesh)
    for mesh in (mesh11, mesh22):
        restored = restore_workdir(str(out / "run_1x2"), mesh=mesh, batch_size=config.batch_size)
        st = restored.state
        name = f"1x2->{mesh.shape['data']}x{mesh.shape['model']}"
        r = res[name] = dict(compare(saved, st, mesh), step=restored.step)
        if mesh is mesh22:
            st22 = st
        else:   # training continues from the restored state on the new mesh (synthetic inputs: no augment)
            tr = _trainer(config, mesh11)
            st11, metrics = tr.train_step(st, tr.global_batch(batches[3]))
            r["continues"] = bool(np.isfinite(float(metrics["loss"]))) and int(st11.step) == 4
    # and back: saved on 2x2, restored onto 1x2 by Checkpointer.restore against a state made on 1x2
    saved22 = save(out / "run_2x2", st22, 3, mesh22)
    ck = ckpt_lib.Checkpointer(str(out / "run_2x2" / "checkpoints"))
    st12, _, _ = ck.restore(state12)
    ck.close()
    res["2x2->1x2"] = compare(saved22, st12, mesh12)
    # and from one device (after a step there) onto two columns
    saved11 = save(out / "run_1x1", st11, 4, mesh11)
    st = restore_workdir(str(out / "run_1x1"), mesh=mesh12, batch_size=config.batch_size).state
    res["1x1->1x2"] = compare(saved11, st, mesh12)
    return res


def task_onecolumn(out: Path) -> dict:
    from alexnet_jax import comms, parallel
    from alexnet_jax.config import Config
    res = {}
    cfgs = {"alexnet_owt": Config(model="alexnet_owt", num_classes=10, input_size=64, width=0.125,
                                  batch_size=8, lr=0.01),
            "lenet5": Config(model="lenet5", num_classes=10, input_size=32, batch_size=8, lr=0.01)}
    for name, config in cfgs.items():
        batches = _synthetic(config)
        one, l1, _, _ = _train(config, parallel.make_mesh(1, 1), batches, 5)
        mesh = parallel.make_mesh(2, 2)
        four, l4, compiled, trainer = _train(config, mesh, batches, 5)
        gb = trainer.global_batch(batches[0])
        rep = comms.analyze(compiled, mesh)
        cs = [c for c in rep.collectives if c.group_size > 1]
        p1, p4 = _flat(one.params), _flat(four.params)
        res[name] = {
            "batch": config.batch_size,
            "batch_shard_rows": sorted(s.data.shape[0] for s in gb["image"].addressable_shards),
            "loss_max_rel_diff": float(np.max(np.abs(np.array(l4) - l1) / np.abs(l1))),
            "param_max_abs_diff": max(float(np.max(np.abs(p1[k] - p4[k]))) for k in p1),
            "collective_ops": sorted({c.op for c in cs}), "collective_axes": sorted({c.axis for c in cs})}
    return res


def task_errors(out: Path) -> dict:
    """What needs the forced devices: the user-facing path refusing a batch the 4 data devices cannot split
    (before any data is read), and a one-column model's plan on a model axis of 2."""
    from alexnet_jax import parallel
    from alexnet_jax.config import Config
    from alexnet_jax.run import train_and_evaluate

    cfg = Config(model="lenet5", dataset="digits", input_size=32, batch_size=6, mesh_data=4, mesh_model=1,
                 data_dir=str(out / "tfds"))
    try:
        train_and_evaluate(cfg, str(out / "wd"), progress=False)
        refused = "no error"
    except Exception as e:  # noqa: BLE001
        refused = f"{type(e).__name__}: {e}"
    owt = _trainer(_small_config(model="alexnet_owt"), parallel.make_mesh(1, 2))
    return {"train_batch_6_on_data_4": refused, "one_column_on_model_2": owt.plan.describe()}


def task_augmeshes(out: Path, steps: int) -> dict:
    """A CIFAR-like tree prepared as cifar10, the real loader and the run's device augmentation."""
    import jax
    from PIL import Image

    from alexnet_jax import data as data_lib
    from alexnet_jax import parallel
    from alexnet_jax.data.listing import CIFAR10_CLASSES
    from alexnet_jax.run import build_run
    from alexnet_jax.trainer import AUGMENT_STREAM

    rng = np.random.default_rng(0)
    for c in CIFAR10_CLASSES:
        d = out / "src" / "train" / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i:04d}.png")
    data_lib.prepare("cifar10", str(out / "src"), str(out / "tfds"), workers=0)
    config = _small_config(dataset="cifar10", data_dir=str(out / "tfds"), augment="cifar", input_size=32)
    res = {"losses": {}, "images_max_diff": {}, "param_max_diff": {}}
    ref_images = ref_params = None
    for d, m in MESHES:
        run = build_run(config, parallel.make_mesh(d, m), evaluation=False, prefetch=0)
        trainer, loader = run.trainer, run.train_loader
        state, losses = trainer.init(), []
        key = jax.random.fold_in(jax.random.key(config.seed), AUGMENT_STREAM)
        augment = jax.jit(trainer.augment.train)
        for _ in range(steps):
            batch = trainer.global_batch(next(loader))
            images = np.asarray(augment(batch["image"], batch["index"], key))
            state, metrics = trainer.train_step(state, batch)
            losses.append(float(metrics["loss"]))
        params = _flat(state.params)
        ref_images = images if ref_images is None else ref_images
        ref_params = params if ref_params is None else ref_params
        name = f"{d}x{m}"
        res["losses"][name] = losses
        res["images_max_diff"][name] = float(np.max(np.abs(images - ref_images)))
        res["param_max_diff"][name] = max(float(np.max(np.abs(params[k] - ref_params[k]))) for k in params)
        run.close()
    return res


TASKS = {"meshes": task_meshes, "augmeshes": task_augmeshes, "fullsize": task_fullsize, "checkpoint": task_checkpoint,
         "onecolumn": task_onecolumn, "errors": task_errors, "caffe_lrn": task_caffe_lrn}

if __name__ == "__main__":
    task, out = sys.argv[1], Path(sys.argv[2])
    kw = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    out.mkdir(parents=True, exist_ok=True)
    result = TASKS[task](out, **kw)
    result["seconds"] = time.perf_counter() - T0
    (out / "result.json").write_text(json.dumps(result, indent=1, default=str))
