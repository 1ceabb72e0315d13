"""All sharding lives here: the `data` x `model` device mesh, partition specs named by role, the
2012 column split via `jax.shard_map`, sharded-from-birth model state and global batches.

The column split, as in Krizhevsky et al. 2012 (Fig. 2; ../shared/reference/paper_facts.md §1.2):

    device (0, m) holds column m of conv1..conv5, fc6, fc7 (and their optimiser state)
    conv1 -> LRN -> pool -> conv2 -> LRN -> pool        no communication
    ==== all-gather over `model`: 13*13*128 maps ===    conv3 reads both columns
    conv3 -> conv4 -> conv5 -> pool                     no communication
    ==== all-gather over `model`: 6*6*128 ==========    fc6 reads both columns
    fc6 -> dropout
    ==== all-gather over `model`: 2048 =============    fc7 reads both columns
    fc7 -> dropout
    ==== all-gather over `model`: 2048 =============    fc8 (replicated on both devices)

XLA's automatic partitioner does not split grouped convolutions across devices (it gathers the
inputs and kernels and runs the whole conv everywhere: openxla/xla#47945), so the columns are
placed by hand: the model's per-column code runs inside `jax.shard_map`, and the model's
`exchange` hook becomes an explicit `all_gather` over the `model` axis.  With `model = 1` the
same code runs with both columns on each device (the all-gather over a size-1 axis is a no-op).
In the backward pass JAX transposes the all-gathers feeding conv3, fc6 and fc7 (gathered as
`varying`) into reduce-scatters of the gradient, each device receiving the other column's
contribution to its own maps: the paper's volume, per image per direction.  The fc8 gather is
`invarying` (fc8 is replicated), so its gradient needs no communication (tests/test_parallel.py).

The other models (LeNet, the one-column AlexNets) are data-parallel over every device of the
mesh (their batch is split over both axes) through ordinary jit sharding propagation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from alexnet_jax.models.alexnet import AlexNet2012

DATA, MODEL = "data", "model"


@dataclasses.dataclass(frozen=True)
class Roles:
    """Partition specs by role.  Suffix letters name the dimensions (C = column)."""

    images_BHWC: P = P(DATA)                 # two-column net: batch over `data`, both columns see it
    images_all_BHWC: P = P((DATA, MODEL))    # one-column nets: batch over every device
    labels_B: P = P(DATA)
    labels_all_B: P = P((DATA, MODEL))
    column_params_C: P = P(MODEL)            # leading column axis of every column layer's parameters
    replicated: P = P()
    column_acts_CB: P = P(MODEL, DATA)       # per-column, per-example tensors (dropout masks)
    logits_BK: P = P(DATA)


ROLES = Roles()


# ------------------------------------------------------------------------------------------------
# Mesh
# ------------------------------------------------------------------------------------------------
def make_mesh(data: int = -1, model: int = 1, devices: list | None = None) -> Mesh:
    """A (data, model) mesh; `data=-1` takes all devices the `model` axis leaves.

    `data * model` may be smaller than the number of devices (the first ones are used), so a run
    can compare 1 device against 2 on the same machine.
    """
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    if model < 1:
        raise ValueError(f"mesh model axis must be >= 1, got {model}")
    if data == -1:
        if n % model:
            raise ValueError(f"{n} devices do not split into a model axis of {model}; "
                             f"choose mesh_model dividing {n}")
        data = n // model
    if data < 1 or data * model > n:
        raise ValueError(f"mesh data={data} x model={model} needs {data * model} devices but {n} are "
                         f"available ({jax.default_backend()}); on CPU set "
                         f"XLA_FLAGS=--xla_force_host_platform_device_count={data * model} before jax starts")
    return jax.make_mesh((data, model), (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto),
                         devices=devices[:data * model])


def is_column_model(model) -> bool:
    return isinstance(model, AlexNet2012)


def check_model_fits(model, mesh: Mesh) -> None:
    m = mesh.shape[MODEL]
    if is_column_model(model):
        cols = model.conv1.kernel.shape[0]
        if cols % m:
            raise ValueError(f"the two-column AlexNet needs mesh model axis 1 or 2, got {m}")
    elif m != 1:
        pass  # one-column models run data-parallel over all devices


def batch_spec(model, mesh: Mesh) -> P:
    return ROLES.images_BHWC if is_column_model(model) else ROLES.images_all_BHWC


def batch_divisor(model, mesh: Mesh) -> int:
    """How many ways the global batch is split."""
    return mesh.shape[DATA] if is_column_model(model) else mesh.shape[DATA] * mesh.shape[MODEL]


# ------------------------------------------------------------------------------------------------
# Parameter shardings
# ------------------------------------------------------------------------------------------------
def _spec_of(variable, mesh: Mesh) -> P:
    names = variable.get_metadata().get("out_sharding") if hasattr(variable, "get_metadata") else None
    if not names:
        return P()
    return P(*(n if n in mesh.axis_names else None for n in names))


def state_specs(state: nnx.State, mesh: Mesh):
    """PartitionSpec per leaf, from each Variable's `out_sharding` metadata (else replicated)."""
    return jax.tree.map(lambda v: _spec_of(v, mesh), state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def state_shardings(state: nnx.State, mesh: Mesh):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), state_specs(state, mesh),
                        is_leaf=lambda x: isinstance(x, P))


def create_sharded(build: Callable[[], nnx.Module], mesh: Mesh) -> nnx.Module:
    """Build a model with every parameter created directly in its sharded layout.

    The model is first traced abstractly; then its initialiser runs under `jit` with
    `out_shardings`, so no parameter is ever materialised whole on one device.  Random values
    do not depend on the mesh (JAX's partitionable threefry), so every mesh gets the same model.
    """
    def _build():
        with nnx.use_eager_sharding(False):
            return build()

    abstract = nnx.eval_shape(_build)
    check_model_fits(abstract, mesh)
    graphdef, abs_state = nnx.split(abstract)
    shardings = state_shardings(abs_state, mesh)
    state = jax.jit(lambda: nnx.state(_build()), out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def abstract_state(build: Callable[[], nnx.Module], mesh: Mesh):
    """(graphdef, state of ShapeDtypeStructs carrying this mesh's shardings): a restore target."""
    def _build():
        with nnx.use_eager_sharding(False):
            return build()

    graphdef, abs_state = nnx.split(nnx.eval_shape(_build))
    shardings = state_shardings(abs_state, mesh)
    return graphdef, jax.tree.map(lambda v, s: v.replace(jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s)),
                                  abs_state, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))


# ------------------------------------------------------------------------------------------------
# The forward pass on a mesh
# ------------------------------------------------------------------------------------------------


def gather_columns(hs: list[jax.Array], to: str = "invarying") -> jax.Array:
    """The cross-column exchange inside shard_map: all-gather every column's maps over `model`,
    then lay the columns side by side on the channel axis (column 0's maps first).

    `to="varying"` where the result feeds per-column layers (its transpose is a reduce-scatter),
    `"invarying"` where it feeds the replicated fc8 (whose logits must be the same on all columns)."""
    local = jnp.stack(hs)                                               # (local columns, B, ..., C)
    every = jax.lax.all_gather(local, MODEL, axis=0, tiled=True, to=to)  # (2, B, ..., C)
    return jnp.concatenate([every[i] for i in range(every.shape[0])], axis=-1)


def apply(model: nnx.Module, x_BHWC: jax.Array, *, mesh: Mesh | None, train: bool = False,
          dropout_key: jax.Array | None = None) -> jax.Array:
    """Run `model` on a (global) batch.  Two-column AlexNet: columns on the `model` axis."""
    if mesh is None or not is_column_model(model):
        return model(x_BHWC, train=train, dropout_key=dropout_key)
    graphdef, state = nnx.split(model)
    specs = state_specs(state, mesh)
    use_masks = train and model.dropout_rate > 0
    masks = model.dropout_masks(dropout_key, x_BHWC.shape[0]) if use_masks else ()
    mask_specs = (ROLES.column_acts_CB, ROLES.column_acts_CB) if use_masks else ()

    def per_device(state, x, masks):
        local_model = nnx.merge(graphdef, state)

        def exchange(hs, layer):  # scoped by the layer it feeds, so comms.py can attribute it in the HLO
            with jax.named_scope(layer):
                return gather_columns(hs, to="invarying" if layer == "fc8" else "varying")

        return local_model(x, train=train, dropout_masks=masks if use_masks else None, exchange=exchange)

    fn = jax.shard_map(per_device, mesh=mesh, in_specs=(specs, ROLES.images_BHWC, mask_specs),
                       out_specs=ROLES.logits_BK)
    return fn(state, x_BHWC, masks)


# ------------------------------------------------------------------------------------------------
# Global batches from per-process data
# ------------------------------------------------------------------------------------------------
def global_batch(batch: dict[str, np.ndarray], model, mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble per-process numpy batches into global arrays sharded over the batch axis."""
    spec = batch_spec(model, mesh)
    n = batch_divisor(model, mesh)
    out = {}
    for k, v in batch.items():
        if jax.process_count() == 1 and np.shape(v)[0] % n:
            raise ValueError(f"batch of {np.shape(v)[0]} ({k!r}) is not divisible by the {n} devices that "
                             f"split the batch (mesh data={mesh.shape[DATA]} x model={mesh.shape[MODEL]}); "
                             f"choose a multiple of {n}")
        sharding = NamedSharding(mesh, P(spec[0], *([None] * (v.ndim - 1))))
        out[k] = jax.make_array_from_process_local_data(sharding, np.asarray(v))
    return out


def batch_feed(model, mesh: Mesh, batch_size: int) -> tuple[int, int]:
    """(index, count): this process feeds the index-th of `count` equal, contiguous slices of the global
    batch, the rows its devices hold.  Processes whose devices hold the same rows (columns of one data
    replica on different processes) must read the same data: with data=1 every process feeds the whole
    batch, (0, 1).  One process: (0, 1)."""
    sharding = NamedSharding(mesh, P(batch_spec(model, mesh)[0]))
    rows = sorted({(i[0].start or 0, batch_size if i[0].stop is None else i[0].stop)
                   for i in sharding.addressable_devices_indices_map((batch_size,)).values()})
    if not rows:
        raise ValueError(f"process {jax.process_index()} has no device in the mesh {dict(mesh.shape)}")
    start, stop = rows[0][0], rows[-1][1]
    n = stop - start
    if any(a[1] != b[0] for a, b in zip(rows, rows[1:], strict=False)) or batch_size % n or start % n:
        raise ValueError(f"process {jax.process_index()} holds batch rows {rows} of {batch_size}, not one "
                         f"contiguous equal slice; lay the mesh out so each process's devices are adjacent")
    return start // n, batch_size // n


def batch_shardings(model, mesh: Mesh) -> dict[str, NamedSharding]:
    """Shardings of a training batch {"image": (B, H, W, C), "label": (B,)}: split over the batch axis."""
    axis = batch_spec(model, mesh)[0]
    return {"image": NamedSharding(mesh, P(axis)), "label": NamedSharding(mesh, P(axis))}


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
