"""The PyTorch peers (../shared/peers, next to the repository) and the exact torch twins of our models,
each run in a subprocess (torch is optional, and JAX may hold most of a GPU's memory), and the
ours/peer ratios, taken in the same invocation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_peer_dir() -> Path:
    """<repository>/../shared/peers."""
    return REPO_ROOT.parent / "shared" / "peers"


def default_data_dir(name: str) -> Path:
    return REPO_ROOT.parent / "shared" / "data" / name


def torch_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def thread_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[k] = str(threads)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + rest)
    return env


def run_json(cmd: list[str], *, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run `cmd`; its last stdout line is JSON.  Errors come back as {"error": ...}."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "cmd": cmd}
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    try:
        out = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"exit {p.returncode}: {(p.stderr or p.stdout)[-800:]}", "cmd": cmd}
    if isinstance(out, dict):
        out.setdefault("cmd", cmd)
        if p.returncode:
            out.setdefault("error", f"exit {p.returncode}: {p.stderr[-400:]}")
    return out


PEER_KEYS = {"alexnet": "alexnet_2012_two_column", "alexnet_owt": "torchvision_alexnet"}


def run_peers(specs: list[dict[str, Any]], *, batch: int, steps: int, peer_dir: Path, device: str | None,
              threads: int | None, compile_: bool = True, dtype: str = "float32",
              timeout: float = 600) -> dict[str, Any]:
    """The PyTorch peers matching `specs` ({model name: peer result}); unmatched models are listed.

    torch_alexnet.py uses bf16 autocast on CUDA and float32 on a CPU whatever our dtype; the CIFAR
    mirror uses bf16 autocast when our dtype is bfloat16 and it runs on CUDA."""
    out: dict[str, Any] = {"skipped": {}}
    if not torch_available():
        out["skipped"]["all"] = "torch is not installed (pip install 'alexnet-jax[peer]')"
        return out
    want = {PEER_KEYS[s["name"]] for s in specs if s["name"] in PEER_KEYS and s["input_size"] in (224, 227)}
    if want:
        cmd = [sys.executable, "-m", "alexnet_jax.bench.torch_twins", "alexnet", "--peer-dir", str(peer_dir),
               "--batch", str(batch), "--steps", str(steps), "--variants", ",".join(sorted(want))]
        if device:
            cmd += ["--device", device]
        if threads:
            cmd += ["--threads", str(threads)]
        if not compile_:
            cmd.append("--no-compile")
        out["torch_alexnet"] = run_json(cmd, env=thread_env(threads), timeout=timeout)
    if any(s["name"] == "alexnet_cifar" for s in specs):
        cmd = [sys.executable, "-m", "alexnet_jax.bench.torch_twins", "cifar", "--batch", str(batch),
               "--steps", str(steps), "--device", device or ("cuda" if _torch_cuda() else "cpu")]
        if threads:
            cmd += ["--threads", str(threads)]
        if dtype == "bfloat16":
            cmd.append("--amp")
        out["torch_cifar"] = run_json(cmd, env=thread_env(threads), timeout=timeout)
    for s in specs:
        if s["name"] in PEER_KEYS and s["input_size"] not in (224, 227):
            out["skipped"][s["name"]] = f"torch_alexnet.py runs 224/227 inputs only (asked {s['input_size']})"
        elif s["name"] not in PEER_KEYS and s["name"] != "alexnet_cifar":
            out["skipped"][s["name"]] = "no per-step PyTorch peer for this model (lenet5: use --lenet-epoch)"
    return out


def _torch_cuda() -> bool:
    try:
        p = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True, timeout=120)
        return p.stdout.strip().endswith("True")
    except Exception:  # noqa: BLE001
        return False


def peer_ratios(results: list[dict[str, Any]], peers: dict[str, Any]) -> dict[str, Any]:
    """ours / peer img/s per matching model, each peer variant; `torch_alexnet` variants are compared
    with our pipelined rate (its method), the CIFAR peer with our median-step rate (its method)."""
    ratios: dict[str, Any] = {}
    ta = peers.get("torch_alexnet") or {}
    for r in results:
        name = r["model"]
        if name in PEER_KEYS and isinstance(ta.get("images_per_second"), dict):
            vs = {k: v for k, v in ta["images_per_second"].items() if k.startswith(PEER_KEYS[name])}
            if vs:
                best_k = max(vs, key=vs.get)
                ratios[name] = {"ours_images_per_second": r["images_per_second_pipelined"],
                                "ours_method": "pipelined (N steps, one sync)",
                                "peer": {k: {"images_per_second": v,
                                             "ratio": r["images_per_second_pipelined"] / v}
                                         for k, v in vs.items()},
                                "best_peer": best_k,
                                "ratio_vs_best_peer": r["images_per_second_pipelined"] / vs[best_k]}
        if name == "alexnet_cifar" and (peers.get("torch_cifar") or {}).get("best"):
            b = peers["torch_cifar"]["best"]
            ratios[name] = {"ours_images_per_second": r["images_per_second"],
                            "ours_method": "median of synchronised steps",
                            "best_peer": f"torch_cifar_two_column_alexnet channels_last={b['channels_last']} "
                                         f"compiled={b['compiled']}",
                            "peer_images_per_second": b["images_per_second"],
                            "ratio_vs_best_peer": r["images_per_second"] / b["images_per_second"]}
    return ratios


def run_lenet_peer(mnist_dir: str | os.PathLike, peer_dir: Path, threads: int | None,
                   timeout: float = 600) -> dict[str, Any]:
    if not torch_available():
        return {"skipped": "torch is not installed"}
    script = Path(peer_dir) / "torch_lenet_cpu.py"
    if not script.exists():
        return {"skipped": f"{script} not found"}
    return run_json([sys.executable, str(script), str(mnist_dir)], env=thread_env(threads), timeout=timeout)


def run_lenet_twin(mnist_dir: str | os.PathLike, threads: int | None, *, batch: int = 128, epochs: int = 3,
                   timeout: float = 900) -> dict[str, Any]:
    """The exact torch twin of our lenet5 (torch_twins `lenet`: the same function), best of `epochs` epochs."""
    if not torch_available():
        return {"skipped": "torch is not installed"}
    cmd = [sys.executable, "-m", "alexnet_jax.bench.torch_twins", "lenet", str(mnist_dir), "--batch", str(batch),
           "--epochs", str(epochs)]
    if threads:
        cmd += ["--threads", str(threads)]
    return run_json(cmd, env=thread_env(threads), timeout=timeout)
