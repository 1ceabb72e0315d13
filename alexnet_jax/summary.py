"""Per-layer model summary: output shapes, parameters and multiply-adds.

Multiply-adds are counted from the traced computation itself (the jaxpr of a forward pass), not
from a table: every `conv_general_dilated` contributes out_elements x (kh * kw * in_channels /
groups) and every `dot_general` out_elements x contracted_size.  Biases, activations, LRN and
pooling are not counted (the convention of experiments/REPRODUCTION.md).  Layers are
the `jax.named_scope`s the models put around each layer.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from alexnet_jax.models import create_model
from alexnet_jax.models.layers import COLUMN_AXIS


def _eqn_macs(eqn) -> int:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
        out = eqn.outvars[0].aval
        rhs = eqn.invars[1].aval
        dn = eqn.params["dimension_numbers"]
        out_feature_dim = dn.rhs_spec[0]
        return math.prod(out.shape) * (math.prod(rhs.shape) // rhs.shape[out_feature_dim])
    if name == "dot_general":
        out = eqn.outvars[0].aval
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval
        return math.prod(out.shape) * math.prod(lhs.shape[d] for d in lhs_contract)
    return 0


def _sub_jaxprs(eqn):
    for v in eqn.params.values():
        for item in (v if isinstance(v, (tuple, list)) else (v,)):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def _scope(eqn) -> str:
    stack = str(eqn.source_info.name_stack)
    parts = [p for p in stack.split("/") if p and not p.startswith(("jit(", "pjit(", "jvp(", "transpose("))]
    return parts[-1] if parts else "(top)"


def layer_table(fn, *args) -> OrderedDict[str, dict[str, Any]]:
    """{scope: {"macs": int, "shape": tuple}} for `fn(*args)`, in execution order."""
    closed = jax.make_jaxpr(fn)(*args)
    table: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            subs = list(_sub_jaxprs(eqn))
            if subs:
                for sub in subs:
                    walk(sub)
                continue
            row = table.setdefault(_scope(eqn), {"macs": 0, "shape": None})
            row["macs"] += _eqn_macs(eqn)
            if eqn.outvars and hasattr(eqn.outvars[0].aval, "shape"):
                row["shape"] = tuple(eqn.outvars[0].aval.shape)

    walk(closed.jaxpr)
    return table


def _param_rows(model: nnx.Module) -> OrderedDict[str, int]:
    rows: OrderedDict[str, int] = OrderedDict()
    for path, leaf in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        rows[str(path[0])] = rows.get(str(path[0]), 0) + int(math.prod(leaf.get_value().shape))
    return rows


def summarize(name: str, *, input_size: int | None = None, num_classes: int | None = None,
              width: float = 1.0, **kwargs) -> dict[str, Any]:
    """Build the model and return {"model", "input_size", "params", "macs", "layers": [...]}.

    MACs are per image (the forward pass is traced with batch 1).
    """
    model = create_model(name, input_size=input_size, num_classes=num_classes, width=width, **kwargs)
    size = model.input_size
    channels = getattr(model, "in_channels", 3)
    x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
    graphdef, state = nnx.split(model)
    table = layer_table(lambda s, x: nnx.merge(graphdef, s)(x, train=False), state, x)
    params = _param_rows(model)
    per_column = {str(path[0]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
                  if (v.get_metadata().get("axes") or (None,))[0] == COLUMN_AXIS}
    layers, seen = [], set()
    for scope, row in table.items():
        if row["macs"] == 0 and scope not in params and not any(p.lower().endswith(scope.lower()) for p in params):
            continue
        owned = [p for p in params
                 if p == scope or p.lower().endswith("_" + scope.lower()) or p.lower() == scope.lower()]
        seen.update(owned)
        columns = model.columns if set(owned) & per_column else 1
        layers.append({"layer": scope, "output_shape": list(row["shape"][1:]) if row["shape"] else None,
                       "columns": columns, "params": sum(params[p] for p in owned), "macs": row["macs"]})
    rest = [p for p in params if p not in seen]
    if rest:
        layers.append({"layer": "+".join(rest), "output_shape": None, "columns": 1,
                       "params": sum(params[p] for p in rest), "macs": 0})
    return {"model": name, "input_size": size, "num_classes": model.num_classes, "columns": model.columns,
            "params": sum(params.values()), "macs": sum(r["macs"] for r in table.values()), "layers": layers}


def summary_table(summary: dict[str, Any]) -> str:
    """One row per layer.  In a column net, a column layer's output shape is one column's (marked
    "x2": every column has one), while its parameters and multiply-adds count all columns."""
    lines = [f"{summary['model']}  input {summary['input_size']}x{summary['input_size']}  "
             f"classes {summary['num_classes']}",
             f"{'layer':<12}{'output (HWC / features)':<32}{'params':>14}{'mult-adds':>16}"]
    for r in summary["layers"]:
        shape = "x".join(map(str, r["output_shape"])) if r["output_shape"] else "-"
        if r["columns"] > 1:
            shape += f" (per column, x{r['columns']})"
        lines.append(f"{r['layer']:<12}{shape:<32}{r['params']:>14,}{r['macs']:>16,}")
    lines.append(f"{'total':<12}{'':<32}{summary['params']:>14,}{summary['macs']:>16,}")
    if summary.get("columns", 1) > 1:
        lines.append(f"{summary['columns']} columns: parameters and multiply-adds count every column; a column "
                     f"layer's output shape is one column's")
    return "\n".join(lines)
