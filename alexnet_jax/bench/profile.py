"""Per-op device time of the training step from a jax.profiler trace, each op named by its layer and
direction from the compiled HLO (read with alexnet_jax.comms, the same reader that finds collectives),
and the element types the compiled step's convolutions and matrix products run in."""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time
from typing import Any

import jax

from alexnet_jax import comms
from alexnet_jax.bench.step import synthetic_batch
from alexnet_jax.trainer import Trainer


def describe_ops(hlo_text: str) -> dict[str, str]:
    """{instruction: "<layer> fwd|bwd [what]"} for the instructions of a compiled module: the layer scope
    most of its own or its fused computation's op_names name, else the fused computation's root op."""
    comps = comms.computations(hlo_text)
    out = {}
    for body in comps.values():
        for ins in body:
            m = re.match(r"^(?:ROOT )?%([\w.\-]+) = (.*)$", ins)
            if not m:
                continue
            name, rest = m.groups()
            names = comms.op_names(rest)
            called = re.search(r"calls=%([\w.\-]+)", rest)
            root = ""
            if called and called.group(1) in comps:
                sub = comps[called.group(1)]
                names += [n for line in sub for n in comms.op_names(line)]
                roots = [line for line in sub if line.startswith("ROOT ")]
                if roots:
                    r = re.match(r"^ROOT %[\w.\-]+ = (\S+) (\w[\w\-]*)\(", roots[0])
                    w = re.search(r"window=\{size=(\S+?)[ }]", roots[0])
                    root = f"{r.group(2)} {r.group(1)}" if r else roots[0][:60]
                    root += f" window {w.group(1)}" if w else ""
            if names:
                scopes = collections.Counter(
                    f"{comms.layer_scope(n) or 'other'} {'bwd' if comms.is_backward(n) else 'fwd'}" for n in names)
                top = scopes.most_common(1)[0][0]
                out[name] = top + (f" [{root}]" if root.startswith("convolution") else "")
            elif root:
                out[name] = root
    return out


_DEF = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[")
_MATH = re.compile(r"^\s*(?:ROOT )?%[\w.\-]+ = (\w+)\[[^=]*?\s(convolution|dot)\(%([\w.\-]+), %([\w.\-]+)\)")


def arithmetic_dtypes(hlo_text: str) -> dict[str, int]:
    """{"convolution f32 x f32 -> f32": count, "dot bf16 x bf16 -> f32": count, ...} over a compiled
    module: the element types the backend actually computes each convolution and matrix product in
    (XLA:CPU, for one, converts bfloat16 convolutions to float32 before running them)."""
    dtype = {m.group(1): m.group(2) for m in map(_DEF.match, hlo_text.splitlines()) if m}
    out: collections.Counter = collections.Counter()
    for line in hlo_text.splitlines():
        m = _MATH.match(line)
        if m:
            res, op, a, b = m.groups()
            out[f"{op} {dtype.get(a, '?')} x {dtype.get(b, '?')} -> {res}"] += 1
    return dict(sorted(out.items()))


def profile_step(config, *, steps: int = 3, top: int = 15, trace_dir: str | None = None,
                 name: str | None = None) -> dict[str, Any]:
    """The `top` ops of the train step by time per step (summed over XLA:CPU's worker threads), their
    share of all op time, what each op is, and the shares per layer."""
    trainer = Trainer.build(config)
    state = trainer.init()
    data = synthetic_batch(trainer)
    compiled = trainer.train_step.lower(state, data).compile()
    for _ in range(2):
        state, metrics = compiled(state, data)
    jax.block_until_ready((state, metrics))
    d = trace_dir or tempfile.mkdtemp(prefix="alexnet_jax_profile_")
    t = time.perf_counter()
    with jax.profiler.trace(d, create_perfetto_trace=True):
        for _ in range(steps):
            state, metrics = compiled(state, data)
        jax.block_until_ready((state, metrics))
    wall = (time.perf_counter() - t) / steps
    files = sorted(glob.glob(os.path.join(d, "**", "perfetto_trace.json.gz"), recursive=True))
    if not files:
        return {"error": f"no perfetto trace under {d}"}
    events = json.load(gzip.open(files[-1]))
    events = events["traceEvents"] if isinstance(events, dict) else events
    hlo = compiled.as_text()
    desc = describe_ops(hlo)
    # un-annotated weight-gradient convolutions: name them by the kernel whose dimensions they have
    kernels = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if len(leaf.shape) >= 4 and any("kernel" in k for k in keys):
            h, w, i, o = leaf.shape[-4:]
            kernels[(i, h, w, o)] = keys[0]     # XLA:CPU's weight-gradient conv writes (I, H, W, O)
    for op, what in desc.items():
        shape = re.match(r"^convolution f32\[([\d,]+)\]", what)
        if shape:
            layer = kernels.get(tuple(int(v) for v in shape.group(1).split(",")))
            desc[op] = f"{layer} bwd (weight gradient)" if layer else what
        elif what.startswith("iota s32") or "window 1x3x3x1" in what:
            desc[op] = "max-pool fwd (max + argmax, for select-and-scatter)"
    per_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in desc:
            per_op[e["name"]] += float(e.get("dur", 0.0)) / 1e3 / steps   # us -> ms per step
    total = sum(per_op.values()) or 1.0
    per_layer: collections.Counter = collections.Counter()
    for op, ms in per_op.items():
        per_layer[desc[op].split(" [")[0]] += ms
    return {"model": name or config.model, "batch": config.batch_size, "step_seconds_wall_traced": wall,
            "op_ms_total_per_step": total,
            "note": "ms summed over XLA:CPU worker threads (can exceed wall time); share = of all op time",
            "top_ops": [{"op": n, "what": desc[n], "ms_per_step": ms, "share": ms / total}
                        for n, ms in per_op.most_common(top)],
            "per_layer": [{"layer": k, "ms_per_step": v, "share": v / total} for k, v in per_layer.most_common()],
            "arithmetic_dtypes": arithmetic_dtypes(hlo),
            "trace_dir": d}
