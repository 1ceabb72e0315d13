"""All sharding lives here: the `data` x `model` device mesh, the rules that map the models' logical
axes onto it, the plan of one run (who holds which rows of the batch and which parameters), the
2012 column split via `jax.shard_map`, and global batches.

The column split (Krizhevsky et al. 2012, Fig. 2) is drawn once, in the README; in short, device
(d, m) holds column m of conv1..conv5, fc6 and fc7 and rows d of the batch, and the columns meet
only at conv3, fc6, fc7 and fc8.  XLA's automatic partitioner does not split grouped
convolutions across devices (it gathers inputs and kernels and runs the whole conv everywhere:
openxla/xla#47945), so the columns are placed by hand: the model's per-column code runs inside
`jax.shard_map`, and the model's `exchange` hook becomes an explicit `all_gather` over `model`.
With `model = 1` the same code runs with both columns on each device (a gather over a size-1 axis
is a no-op).  In the backward pass JAX transposes the gathers feeding conv3, fc6 and fc7 (gathered
as `varying`) into reduce-scatters, each device receiving the other column's contribution to its
own maps; the fc8 gather is `invarying` (fc8 is replicated), so its gradient needs none.

One-column models (LeNet, alexnet_half/owt/keras/bn) are data-parallel over every device of the
mesh (the batch is split over both axes) through ordinary jit sharding propagation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from alexnet_jax.errors import AlexnetJaxError
from alexnet_jax.models.layers import COLUMN_AXIS, compiling_for, no_tap

DATA, MODEL = "data", "model"
# Logical axis -> mesh axis (maxtext's logical-axis rules, sized down).  Models name only logical
# axes, in each parameter's `axes` metadata; a logical axis without a rule is replicated.
RULES: dict[str, str] = {COLUMN_AXIS: MODEL}

HOST_DEVICES_HINT = ("on a CPU, get N devices with XLA_FLAGS=--xla_force_host_platform_device_count=N "
                     "(or --force-host-devices N) before JAX starts")


class MeshError(AlexnetJaxError, ValueError):
    """A mesh that does not fit the devices, the model or the batch; the message says what to change."""


# ------------------------------------------------------------------------------------------------
# Mesh
# ------------------------------------------------------------------------------------------------
def resolve_mesh_shape(data: int, model: int, n_devices: int) -> tuple[int, int]:
    """(data, model) for `n_devices`: `model=-1` takes 2 columns when the data axis leaves 2+ devices (and an
    even number of them), else 1; `data=-1` takes every device the model axis leaves."""
    if model == -1:
        free = n_devices // data if data > 0 else n_devices
        model = 2 if free >= 2 and free % 2 == 0 else 1
    if model < 1:
        raise MeshError(f"mesh_model must be >= 1 or -1 (follow the devices), got {model}")
    if data == -1:
        if n_devices % model:
            raise MeshError(f"mesh_model={model} needs a multiple of {model} devices, but {n_devices} are "
                            f"present ({jax.default_backend()}); {HOST_DEVICES_HINT}")
        data = n_devices // model
    if data < 1 or data * model > n_devices:
        raise MeshError(f"mesh data={data} x model={model} needs {data * model} devices but {n_devices} "
                        f"{'is' if n_devices == 1 else 'are'} present ({jax.default_backend()}); "
                        f"{HOST_DEVICES_HINT}")
    return data, model


def make_mesh(data: int = -1, model: int = 1, devices: list | None = None) -> Mesh:
    """A (data, model) mesh over the first data * model devices (so a run can compare 1 device
    against 2 on one machine); see `resolve_mesh_shape` for -1."""
    devices = list(devices if devices is not None else jax.devices())
    data, model = resolve_mesh_shape(data, model, len(devices))
    return jax.make_mesh((data, model), (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto),
                         devices=devices[:data * model])


def spec(axes: tuple | None) -> P:
    """PartitionSpec of a parameter from its logical `axes` metadata (RULES)."""
    return P(*(RULES.get(a) for a in axes)) if axes else P()


# ------------------------------------------------------------------------------------------------
# The plan of one run
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Plan:
    """How one model runs on one mesh: computed once by `plan()`, read by the Trainer and the loaders.

    columns_on_model  the model's columns are split over the `model` axis (the 2012 net); otherwise
                      the model is data-parallel over every device.
    batch_axes        the mesh axes that split the batch: ("data",) or ("data", "model").
    feed_index/count  this process feeds the feed_index-th of feed_count equal, contiguous slices of
                      the global batch: the rows its devices hold.  Processes that hold the same rows
                      (the columns of one data replica on different processes) read the same data.
    """

    mesh: Mesh
    columns: int
    columns_on_model: bool
    batch_axes: tuple[str, ...]
    batch_size: int
    feed_index: int
    feed_count: int

    @property
    def batch_divisor(self) -> int:
        return int(np.prod([self.mesh.shape[a] for a in self.batch_axes]))

    @property
    def per_process_batch(self) -> int:
        return self.batch_size // self.feed_count

    def batch_sharding(self, ndim: int = 1) -> NamedSharding:
        """Leading (batch) axis split over `batch_axes`, the rest whole."""
        return NamedSharding(self.mesh, P(self.batch_axes, *([None] * (ndim - 1))))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def platform(self) -> str:
        """The platform of the mesh's devices ("cpu", "tpu", "gpu"): the compiler its programs are for, and
        so the formulation the models are traced in (models.layers.cpu_tuned)."""
        return self.mesh.devices.flat[0].platform

    def global_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Per-process numpy arrays -> global arrays split over the batch axes (one transfer for the
        whole batch when a single process holds every row)."""
        shardings = {k: self.batch_sharding(np.ndim(v)) for k, v in batch.items()}
        if jax.process_count() == 1:
            return jax.device_put(batch, shardings)
        return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v)) for k, v in batch.items()}

    def param_shardings(self, state: nnx.State):
        """NamedSharding per Variable of `state`, from its logical `axes` metadata."""
        return jax.tree.map(lambda v: NamedSharding(self.mesh, spec(v.get_metadata().get("axes"))), state,
                            is_leaf=lambda x: isinstance(x, nnx.Variable))

    def describe(self) -> str:
        d, m = self.mesh.shape[DATA], self.mesh.shape[MODEL]
        if self.columns_on_model:
            how = (f"the {self.columns} columns split over `model` ({self.columns // m} per device), "
                   f"the batch over `data`")
        elif self.columns > 1:
            how = "both columns on every device, the batch over `data`"
        else:
            how = f"one-column model: data-parallel over all {d * m} devices"
        return f"mesh data={d} x model={m}: {how}"


def plan(model, mesh: Mesh, batch_size: int) -> Plan:
    """The Plan for `model` (a live or abstract model: only `.columns` is read) on `mesh`.

    Raises MeshError naming what to change when the model, mesh and batch do not fit together."""
    columns = int(getattr(model, "columns", 1))
    m = mesh.shape[MODEL]
    if columns > 1 and columns % m:
        raise MeshError(f"the {columns}-column model cannot split over mesh_model={m}; "
                        f"use mesh_model 1 or {columns}")
    batch_axes = (DATA,) if columns > 1 else (DATA, MODEL)
    divisor = int(np.prod([mesh.shape[a] for a in batch_axes]))
    if batch_size < 1 or batch_size % divisor:
        raise MeshError(f"batch_size {batch_size} is not divisible by the {divisor} devices that split the "
                        f"batch (mesh data={mesh.shape[DATA]} x model={m}); choose a multiple of {divisor}")
    feed_index, feed_count = _feed(mesh, batch_axes, batch_size)
    return Plan(mesh=mesh, columns=columns, columns_on_model=columns > 1 and m > 1, batch_axes=batch_axes,
                batch_size=batch_size, feed_index=feed_index, feed_count=feed_count)


def _feed(mesh: Mesh, batch_axes: tuple[str, ...], batch_size: int) -> tuple[int, int]:
    sharding = NamedSharding(mesh, P(batch_axes))
    rows = sorted({(i[0].start or 0, batch_size if i[0].stop is None else i[0].stop)
                   for i in sharding.addressable_devices_indices_map((batch_size,)).values()})
    if not rows:
        raise MeshError(f"process {jax.process_index()} has no device in the mesh {dict(mesh.shape)}")
    start, stop = rows[0][0], rows[-1][1]
    n = stop - start
    if any(a[1] != b[0] for a, b in zip(rows, rows[1:], strict=False)) or batch_size % n or start % n:
        raise MeshError(f"process {jax.process_index()} holds batch rows {rows} of {batch_size}, not one "
                        f"contiguous equal slice; lay the mesh out so each process's devices are adjacent")
    return start // n, batch_size // n


# ------------------------------------------------------------------------------------------------
# The forward pass on a mesh
# ------------------------------------------------------------------------------------------------
def gather_columns(hs: list[jax.Array], to: str = "invarying") -> jax.Array:
    """The cross-column exchange inside shard_map: all-gather every column's maps over `model`,
    then lay the columns side by side on the channel axis (column 0's maps first).

    `to="varying"` where the result feeds per-column layers (its transpose is a reduce-scatter),
    `"invarying"` where it feeds the replicated fc8 (whose logits must be the same on all columns)."""
    local = jnp.stack(hs)                                               # (local columns, B, ..., C)
    every = jax.lax.all_gather(local, MODEL, axis=0, tiled=True, to=to)  # (columns, B, ..., C)
    return jnp.concatenate([every[i] for i in range(every.shape[0])], axis=-1)


class _Recorder:
    """A tap that keeps every layer's per-column outputs, in call order."""

    def __init__(self):
        self.values: dict[str, list[jax.Array]] = {}
        self.shared: dict[str, bool] = {}

    def __call__(self, name: str, column: int | None, value: jax.Array) -> jax.Array:
        self.values.setdefault(name, []).append(value)
        self.shared[name] = column is None
        return value

    def stacked(self) -> dict[str, jax.Array]:
        return {k: jnp.stack(v) for k, v in self.values.items()}


def apply(model: nnx.Module, x_BHWC: jax.Array, plan: Plan | None = None, *, train: bool = False,
          dropout_key: jax.Array | None = None, taps: bool = False):
    """Run `model` on a global batch: logits, or (logits, taps) with `taps=True`.

    taps[layer] is a list with one array per column (one element for one-column nets and for layers
    the columns share): the layer's output after its activation, as the model's own forward pass
    computed it (layers.Tap).  A column model runs under shard_map with its columns on `model`.

    The model is traced for the compiler of the plan's devices (`layers.compiling_for(plan.platform)`): a
    step compiled for TPU chips holds the plain formulations, one for CPU devices the CPU-tuned ones."""
    if plan is None:
        return _apply(model, x_BHWC, plan, train=train, dropout_key=dropout_key, taps=taps)
    with compiling_for(plan.platform):
        return _apply(model, x_BHWC, plan, train=train, dropout_key=dropout_key, taps=taps)


def _apply(model, x_BHWC, plan, *, train, dropout_key, taps):
    if plan is None or plan.columns == 1:
        rec = _Recorder()
        logits = model(x_BHWC, train=train, dropout_key=dropout_key, tap=rec if taps else no_tap)
        return (logits, rec.values) if taps else logits
    graphdef, state = nnx.split(model)
    specs = jax.tree.map(lambda v: spec(v.get_metadata().get("axes")), state,
                         is_leaf=lambda x: isinstance(x, nnx.Variable))
    use_masks = train and model.dropout_rate > 0
    masks = model.dropout_masks(dropout_key, x_BHWC.shape[0]) if use_masks else ()
    per_column = P(MODEL, DATA)                     # (columns, B, ...) tensors: dropout masks, taps
    tap_specs: dict[str, P] = {}
    if taps:
        probe = _Recorder()
        jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, tap=probe), state, x_BHWC)
        tap_specs = {k: P(None, DATA) if probe.shared[k] else per_column for k in probe.values}

    def per_device(state, x, masks):
        local_model = nnx.merge(graphdef, state)
        rec = _Recorder()

        def exchange(hs, layer):  # scoped by the layer it feeds, so comms.py can attribute it in the HLO
            with jax.named_scope(layer):
                return gather_columns(hs, to="invarying" if layer == "fc8" else "varying")

        first = jax.lax.axis_index(MODEL) * (plan.columns // plan.mesh.shape[MODEL])   # this device's first column
        logits = local_model(x, train=train, dropout_masks=masks if use_masks else None, exchange=exchange,
                             tap=rec if taps else no_tap, first_column=first)
        return logits, rec.stacked()

    fn = jax.shard_map(per_device, mesh=plan.mesh,
                       in_specs=(specs, P(DATA), (per_column, per_column) if use_masks else ()),
                       out_specs=(P(DATA), tap_specs))
    logits, stacked = fn(state, x_BHWC, masks)
    if not taps:
        return logits
    return logits, {k: [v[i] for i in range(v.shape[0])] for k, v in stacked.items()}


def tree_shardings(tree: Any):
    return jax.tree.map(lambda x: x.sharding, tree)
