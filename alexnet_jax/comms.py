"""What a compiled step communicates: every collective in the optimized HLO, its size, mesh axis and layer.

    report = comms.analyze(jitted.lower(*args).compile(), mesh)      # or the HLO text
    print(comms.traffic_table(report))
    comms.bytes_per_image(report, global_batch)                      # {(axis, layer, op): bytes}

Each collective instruction (all-gather, all-reduce, reduce-scatter, collective-permute, all-to-all;
an async `-start`/`-done` pair counts once, at its `-start`) becomes one `Collective` per buffer
(XLA combines gradient all-reduces into one tuple-shaped op; each element is listed with its own
layer).  For each:

* `bytes`     - the size of the op's result buffer (an all-gather's result holds every shard).
* `axis`      - the mesh axis its replica groups run along: replica-group entries are positions
                in the executable's device assignment, which for a mesh is `mesh.devices.flat`;
                a group whose members differ only in the `model` coordinate is "model", only in
                `data` is "data" (both: "data+model").
* `layer`     - the innermost `jax.named_scope` of the op's `metadata={op_name=...}` that names a
                layer (conv1..conv5, lrn1, lrn2, pool5, fc6, fc7, fc8); parallel.apply names each
                column exchange after the layer it feeds.  `backward` is True for ops under
                `transpose(...)` (the gradient pass).
                An op without metadata (XLA:TPU emits some) takes the op_name of the nearest operand
                that has one.
* TPU        - XLA:TPU writes some reduce-scatters as a fusion whose body all-reduces a padded buffer
                and keeps this device's slice (an "all-reduce-scatter": the body's ROOT is a
                dynamic-slice of an all-reduce, sent as a ring reduce-scatter): it is reported as one
                reduce-scatter of the fusion's result, and its body's all-reduce is not counted again.
                Where the padded slices do not line up with the devices' shards, a collective-permute
                of the boundary rows follows: reported as itself, with its operand's layer.
* `sent`      - bytes each device sends (= receives) with a bandwidth-optimal ring of g devices:
                all-gather (g-1)/g * result, reduce-scatter (g-1) * result, all-reduce
                2 (g-1)/g * buffer, all-to-all (g-1)/g * buffer, collective-permute the buffer.
                For g = 2 an all-gather of two columns' maps sends exactly the other column's half:
                that is the paper's "floats per image per direction" (K12 Fig. 2, §3.5).
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict

import numpy as np

OPS = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
LAYERS = ("conv1", "lrn1", "conv2", "lrn2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7", "fc8")
# every model's layer scopes (jax.named_scope in the models): AlexNets, LeNet's C1..OUT
LAYER_SCOPE = re.compile(r"^(conv\d|lrn\d|pool\d|fc\d|C\d|S\d|F6|OUT)$")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
               "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+) = (?P<shape>.+?) "
                    r"(?P<op>" + "|".join(OPS) + r")(?P<start>-start)?\((?P<rest>.*)$")
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


@dataclasses.dataclass(frozen=True)
class Collective:
    op: str                 # all-gather | all-reduce | reduce-scatter | collective-permute | all-to-all
    name: str               # HLO instruction name
    shape: str              # e.g. "f32[2,4,7,7,16]"
    bytes: int              # result buffer bytes
    group_size: int
    groups: tuple           # replica groups (device-assignment positions)
    axis: str               # "model", "data", "data+model" or "none"
    layer: str | None       # innermost layer scope in op_name, or None
    backward: bool          # under transpose(...): part of the gradient computation
    op_name: str

    @property
    def sent(self) -> float:
        """Bytes each device sends (and receives) for this buffer, ring algorithm."""
        g = self.group_size
        if g <= 1:
            return 0.0
        return {"all-gather": (g - 1) / g, "reduce-scatter": g - 1.0, "all-reduce": 2 * (g - 1) / g,
                "all-to-all": (g - 1) / g, "collective-permute": 1.0}[self.op] * self.bytes


@dataclasses.dataclass
class Report:
    collectives: list[Collective]
    mesh_shape: dict[str, int]

    def select(self, *, axis: str | None = None, op: str | None = None, backward: bool | None = None,
               layer: str | None = None) -> list[Collective]:
        return [c for c in self.collectives if (axis is None or c.axis == axis) and (op is None or c.op == op)
                and (backward is None or c.backward == backward) and (layer is None or c.layer == layer)]

    def layers(self, **kw) -> list[str | None]:
        return [c.layer for c in self.select(**kw)]

    def sent_by_axis(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for c in self.collectives:
            out[c.axis] += c.sent
        return dict(out)

    def to_dict(self) -> dict:
        return {"mesh_shape": self.mesh_shape,
                "collectives": [dict(dataclasses.asdict(c), sent=c.sent, groups=[list(g) for g in c.groups])
                                for c in self.collectives]}


# ------------------------------------------------------------------------------------------------
def _arrays(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(dt, tuple(int(d) for d in dims.split(",") if d)) for dt, dims in _ARRAY.findall(shape)
            if dt in DTYPE_BYTES]


def _nbytes(dt: str, dims: tuple[int, ...]) -> int:
    return DTYPE_BYTES[dt] * int(np.prod(dims, dtype=np.int64))


def _result_arrays(op: str, is_start: bool, shape: str):
    """The result buffers; async -start ops return (operands..., results...) tuples."""
    arrs = _arrays(shape)
    if is_start and op in ("all-gather", "reduce-scatter", "all-to-all") and len(arrs) >= 2:
        return arrs[len(arrs) // 2:]
    if is_start and op == "collective-permute" and len(arrs) >= 2:
        return [arrs[1]]
    return arrs


def _braced(rest: str, key: str) -> str | None:
    """The text inside the balanced braces of `key={...}`, or None."""
    i = rest.find(key + "={")
    if i < 0:
        return None
    i += len(key) + 2
    depth, j = 1, i
    while depth and j < len(rest):
        depth += {"{": 1, "}": -1}.get(rest[j], 0)
        j += 1
    return rest[i:j - 1]


def _groups(rest: str, num_devices: int) -> list[tuple[int, ...]]:
    inner = _braced(rest, "replica_groups")
    if inner is not None:
        if not inner.strip():
            return [tuple(range(num_devices))]
        return [tuple(int(v) for v in g.split(",") if v.strip())
                for g in re.findall(r"\{([\d,\s]*)\}", inner)]
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", rest)
    if m:  # mesh form (XLA:GPU): mesh['a'=2,'b'=1] {'a'}: the devices varying along the listed axes
        axes = [(k.strip().strip("'\""), int(v)) for k, v in (a.split("=") for a in m.group(1).split(",") if a)]
        names = [a for a, _ in axes]
        grouped = [names.index(a.strip().strip("'\"")) for a in m.group(2).split(",") if a.strip()]
        ids = np.arange(int(np.prod([n for _, n in axes]))).reshape([n for _, n in axes])
        ids = np.moveaxis(ids, grouped, list(range(len(names) - len(grouped), len(names))))
        size = int(np.prod([axes[i][1] for i in grouped]))
        return [tuple(int(v) for v in row) for row in ids.reshape(-1, size)]
    m = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", rest)
    if m:  # iota form: [groups,size]<=[reshape dims]T(perm)
        dims = [int(v) for v in m.group(1).split(",")]
        ids = np.arange(int(np.prod(dims))).reshape([int(v) for v in m.group(2).split(",")])
        if m.group(3):
            ids = ids.transpose([int(v) for v in m.group(3).split(",")])
        return [tuple(int(v) for v in row) for row in ids.reshape(dims[0], -1)]
    pairs = _braced(rest, "source_target_pairs")
    if pairs is not None:
        return [tuple(int(v) for v in g.split(",")) for g in re.findall(r"\{([\d,]+)\}", pairs)]
    return [tuple(range(num_devices))]


def _axis(groups, mesh_shape: dict[str, int]) -> str:
    names, dims = list(mesh_shape), tuple(mesh_shape.values())
    n = int(np.prod(dims))
    varying = set()
    for g in groups:
        coords = np.array([np.unravel_index(i, dims) for i in g if i < n]).reshape(-1, len(dims))
        for k, name in enumerate(names):
            if len(set(coords[:, k])) > 1:
                varying.add(name)
    return "+".join(sorted(varying)) or "none"


def layer_scope(op_name: str) -> str | None:
    """The innermost layer scope named in an HLO op_name ("jit(f)/transpose(jvp(conv3))/..." -> "conv3")."""
    found = None
    for part in op_name.split("/"):
        while (m := re.match(r"^(?:jit|pjit|jvp|transpose|vmap|checkpoint)\((.*)\)$", part)):
            part = m.group(1)
        if LAYER_SCOPE.match(part):
            found = part
    return found


def is_backward(op_name: str) -> bool:
    """Ops under transpose(...) belong to the gradient computation."""
    return "transpose(" in op_name


def computations(text: str) -> dict[str, list[str]]:
    """{computation name: its instruction lines} of an HLO module's text (ENTRY and fused computations)."""
    comps: dict[str, list[str]] = {}
    cur = None
    for line in text.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .*\{$", line)
        if m:
            cur = m.group(1)
            comps[cur] = []
        elif cur is not None and line.strip() and line.strip() != "}":
            comps[cur].append(line.strip())
    return comps


def op_names(line: str) -> list[str]:
    return _OP_NAME.findall(line)


def _split_op_names(op_name: str, k: int) -> list[str]:
    """XLA joins the op_names of combined ops as 'jit(f)/common/(a:b:c)'; one per tuple element."""
    i = op_name.find("/(")
    if k > 1 and i >= 0 and op_name.endswith(")"):
        parts = op_name[i + 2:-1].split(":")
        if len(parts) == k:
            return [op_name[:i + 1] + p for p in parts]
    return [op_name] * k


# any instruction: %name = shape op(operands), attributes
_ANY = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+) = (?P<shape>.+?) (?P<op>[a-z][\w\-]*)\((?P<args>[^)]*)\)"
                  r"(?P<rest>.*)$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")


def _blocks(text: str) -> dict[str, list[str]]:
    """{computation name: its instruction lines}; lines outside any computation header go under ""."""
    blocks: dict[str, list[str]] = {"": []}
    cur = ""
    for line in text.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .*\{$", line)
        if m:
            cur = m.group(1)
            blocks[cur] = []
        elif line.strip() == "}":
            cur = ""
        elif line.strip():
            blocks[cur].append(line)
    return blocks


def _all_reduce_scatter_bodies(blocks: dict[str, list[str]]) -> dict[str, str]:
    """{fusion body: its all-reduce line} for XLA:TPU's fused reduce-scatters (module docstring)."""
    out = {}
    for name, lines in blocks.items():
        ar = [ln for ln in lines if (m := _INSTR.match(ln)) and m.group("op") == "all-reduce"]
        root = next((ln for ln in lines if ln.lstrip().startswith("ROOT ")), "")
        if name and len(ar) == 1 and (m := _ANY.match(root)) and m.group("op") == "dynamic-slice":
            out[name] = ar[0]
    return out


def _resolve_op_name(name: str, instrs: dict[str, re.Match], depth: int = 12) -> str:
    """The op_name of the nearest operand (breadth first) whose metadata names a layer, else any op_name."""
    seen, frontier, fallback = {name}, [name], ""
    for _ in range(depth):
        nxt = []
        for n in frontier:
            m = instrs.get(n)
            if m is None:
                continue
            om = _OP_NAME.search(m.group("rest"))
            if om and n != name:
                if layer_scope(om.group(1)):
                    return om.group(1)
                fallback = fallback or om.group(1)
            for a in re.findall(r"%([\w.\-]+)", m.group("args")):
                if a not in seen:
                    seen.add(a)
                    nxt.append(a)
        frontier = nxt
    return fallback


def analyze(compiled_or_text, mesh) -> Report:
    """Every collective in a compiled executable (or its `as_text()`), on `mesh` (or a {axis: size} dict)."""
    text = compiled_or_text if isinstance(compiled_or_text, str) else compiled_or_text.as_text()
    mesh_shape = dict(mesh) if isinstance(mesh, dict) else dict(mesh.shape)
    n = int(np.prod(list(mesh_shape.values())))
    blocks = _blocks(text)
    fused_rs = _all_reduce_scatter_bodies(blocks)
    out = []
    for comp, lines in blocks.items():
        if comp in fused_rs:
            continue   # counted where the fusion is called
        instrs = {m.group("name"): m for ln in lines if (m := _ANY.match(ln))}
        for line in lines:
            m = _INSTR.match(line)
            if m:
                name, op, rest, shape = m.group("name"), m.group("op"), m.group("rest"), m.group("shape")
                start = bool(m.group("start"))
            else:
                call = _ANY.match(line)
                callee = _CALLS.search(call.group("rest")) if call and call.group("op") == "fusion" else None
                if not callee or callee.group(1) not in fused_rs:
                    continue
                inner = _INSTR.match(fused_rs[callee.group(1)])
                name, op, shape, start = call.group("name"), "reduce-scatter", call.group("shape"), False
                rest = inner.group("rest") + call.group("rest")
            groups = _groups(rest, n)
            g = max((len(x) for x in groups), default=1)
            if op == "collective-permute":
                g = 2
            arrays = _result_arrays(op, start, shape)
            om = _OP_NAME.search(rest)
            own = om.group(1) if om else _resolve_op_name(name, instrs)
            names = _split_op_names(own, len(arrays))
            for (dt, dims), op_name in zip(arrays, names, strict=True):
                out.append(Collective(op=op, name=name,
                                      shape=f"{dt}[{','.join(map(str, dims))}]",
                                      bytes=_nbytes(dt, dims), group_size=g, groups=tuple(groups),
                                      axis=_axis(groups, mesh_shape), layer=layer_scope(op_name),
                                      backward=is_backward(op_name), op_name=op_name))
    return Report(out, mesh_shape)


def bytes_per_image(report: Report, batch: int, *, sent: bool = True) -> dict[tuple[str, str, str], float]:
    """{(axis, layer, op[+" bwd"]): bytes per image}.  `batch` is the global batch; each data replica's
    collectives carry batch / data images.  sent=True: bytes each device sends (ring accounting, see
    module docstring); False: result-buffer bytes.  Ops with no layer are keyed as '-'."""
    per_group = batch / report.mesh_shape.get("data", 1)
    out: dict[tuple[str, str, str], float] = defaultdict(float)
    for c in report.collectives:
        key = (c.axis, c.layer or "-", c.op + (" bwd" if c.backward else ""))
        out[key] += (c.sent if sent else c.bytes) / per_group
    return dict(out)


def traffic_table(report: Report, batch: int | None = None) -> str:
    """A markdown table of the collectives, one row per buffer."""
    head = "| axis | layer | pass | op | result shape | bytes | group | sent/device |"
    if batch:
        head += " sent/image |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    per_group = (batch / report.mesh_shape.get("data", 1)) if batch else None
    for c in sorted(report.collectives, key=lambda c: (c.axis, c.backward, LAYERS.index(c.layer)
                                                        if c.layer in LAYERS else 99)):
        row = (f"| {c.axis} | {c.layer or '-'} | {'bwd' if c.backward else 'fwd'} | {c.op} | {c.shape} | "
               f"{c.bytes:,} | {c.group_size} | {c.sent:,.0f} |")
        if per_group:
            row += f" {c.sent / per_group:,.0f} |"
        rows.append(row)
    return "\n".join(rows)
