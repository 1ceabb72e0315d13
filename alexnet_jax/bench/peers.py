"""The PyTorch peers (../shared/peers, next to the repository) and the exact torch twins of our models,
each run in a subprocess (torch is optional, and JAX may hold most of a GPU's memory), and the
ours/peer ratios, taken in the same invocation."""

from __future__ import annotations

import importlib.util
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
TWINS = "alexnet_jax.bench.torch_twins"


def _twin_cmd(what: str, threads: int | None, *rest: str) -> list[str]:
    cmd = [sys.executable, "-m", TWINS, what, *rest]
    return cmd + (["--threads", str(threads)] if threads else [])


def run_peers(specs: list[dict[str, Any]], *, batch: int, steps: int, warmup: int = 2, peer_dir: Path,
              device: str | None, threads: int | None, compile_: bool = True, dtype: str = "float32",
              profile: bool = False, timeout: float = 1800) -> dict[str, Any]:
    """The PyTorch peers matching `specs` ({model name: peer result}); unmatched models are listed.

    `alexnet_cifar` runs the exact twin in every configuration (torch_twins `cifar`: eager and
    torch.compile, contiguous and channels_last), with our warm-up and timed steps, under bf16 autocast
    when our dtype is bfloat16.  torch_alexnet.py (the shipped full-size peer) uses bf16 autocast on
    CUDA and float32 on a CPU whatever our dtype."""
    out: dict[str, Any] = {"skipped": {}}
    if not torch_available():
        out["skipped"]["all"] = "torch is not installed (pip install 'alexnet-jax[peer]')"
        return out
    want = {PEER_KEYS[s["name"]] for s in specs if s["name"] in PEER_KEYS and s["input_size"] in (224, 227)}
    if want:
        cmd = _twin_cmd("alexnet", threads, "--peer-dir", str(peer_dir), "--batch", str(batch), "--steps",
                        str(steps), "--variants", ",".join(sorted(want)))
        if device:
            cmd += ["--device", device]
        if not compile_:
            cmd.append("--no-compile")
        out["torch_alexnet"] = run_json(cmd, env=thread_env(threads), timeout=timeout)
    cifar = [s for s in specs if s["name"] == "alexnet_cifar" and s["input_size"] == 32]
    if cifar:
        cmd = _twin_cmd("cifar", threads, "--batch", str(batch), "--steps", str(steps), "--warmup", str(warmup),
                        "--device", device or ("cuda" if _torch_cuda() else "cpu"),
                        "--width", str(cifar[0]["width"]), "--num-classes", str(cifar[0]["num_classes"]))
        if dtype == "bfloat16":
            cmd.append("--amp")
        if not compile_:
            cmd.append("--no-compile")
        if profile:
            cmd.append("--profile")
        out["torch_cifar"] = run_json(cmd, env=thread_env(threads), timeout=timeout)
    for s in specs:
        if s["name"] == "alexnet_cifar" and s["input_size"] != 32:
            out["skipped"][s["name"]] = f"the CIFAR twin has the 32 px stem only (asked {s['input_size']})"
        elif s["name"] in PEER_KEYS and s["input_size"] not in (224, 227):
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


def vs_torch(ours_images_per_second: float, twin: dict[str, Any] | None) -> dict[str, Any] | None:
    """Ours / torch img/s against the fastest configuration of a twin result (torch_configs `summary`) and
    against each configuration; None when the twin did not run."""
    runs = [r for r in (twin or {}).get("runs", []) if "error" not in r]
    if not runs:
        return None
    each = {r["config"]: ours_images_per_second / r["images_per_second"] for r in runs}
    fastest = max(runs, key=lambda r: r["images_per_second"])
    return {"precision": twin["precision"], "fastest_torch": fastest["config"],
            "fastest_torch_images_per_second": fastest["images_per_second"],
            "ratio_vs_fastest": ours_images_per_second / fastest["images_per_second"], "ratio_vs_each": each}


def peer_ratios(results: list[dict[str, Any]], peers: dict[str, Any]) -> dict[str, Any]:
    """ours / peer img/s per matching model, each peer variant; `torch_alexnet` variants are compared
    with our pipelined rate (its method), the CIFAR twin's configurations with our median-step rate (the
    same protocol on both sides)."""
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
        if name == "alexnet_cifar":
            q = vs_torch(r["images_per_second"], peers.get("torch_cifar"))
            if q:
                ratios[name] = {"ours_images_per_second": r["images_per_second"],
                                "ours_method": r["protocol"]["statistic"], "best_peer": q["fastest_torch"],
                                "ratio_vs_best_peer": q["ratio_vs_fastest"], **q}
    return ratios


def run_lenet_peer(mnist_dir: str | os.PathLike, peer_dir: Path, threads: int | None, *, runs: int = 1,
                   timeout: float = 600) -> dict[str, Any]:
    """The shipped simplified LeNet peer (one epoch after one warm-up step per process), `runs` processes;
    the best epoch is reported."""
    if not torch_available():
        return {"skipped": "torch is not installed"}
    script = Path(peer_dir) / "torch_lenet_cpu.py"
    if not script.exists():
        return {"skipped": f"{script} not found"}
    got = [run_json([sys.executable, str(script), str(mnist_dir)], env=thread_env(threads), timeout=timeout)
           for _ in range(max(1, runs))]
    ok = [g for g in got if "images_per_second" in g and "error" not in g]
    if not ok:
        return got[0]
    best = max(ok, key=lambda g: g["images_per_second"])
    return {**best, "runs": len(got), "epoch_seconds_all": [g["epoch_seconds"] for g in ok],
            "protocol": {"unit": "epoch", "warmup": "one step (per process: the script's own)", "timed": len(ok),
                         "statistic": "best of the timed epochs", "untimed": "the script's one warm-up step"}}


def run_lenet_twin(mnist_dir: str | os.PathLike, threads: int | None, *, batch: int = 128, epochs: int = 3,
                   compile_: bool = True, amp: bool = False, timeout: float = 3600) -> dict[str, Any]:
    """The exact torch twin of our lenet5 in every configuration (torch_twins `lenet`), each one warm-up
    epoch then the best of `epochs`."""
    if not torch_available():
        return {"skipped": "torch is not installed"}
    cmd = _twin_cmd("lenet", threads, str(mnist_dir), "--batch", str(batch), "--epochs", str(epochs))
    if not compile_:
        cmd.append("--no-compile")
    if amp:
        cmd.append("--amp")
    return run_json(cmd, env=thread_env(threads), timeout=timeout)


def run_torch_matmul(threads: int | None, size: int = 4096, dtypes=("float32", "bfloat16"),
                     timeout: float = 600) -> dict[str, Any]:
    if not torch_available():
        return {"skipped": "torch is not installed"}
    return run_json(_twin_cmd("matmul", threads, "--size", str(size), "--dtypes", ",".join(dtypes)),
                    env=thread_env(threads), timeout=timeout)


def run_subsampling(threads: int | None, *, batch: int = 128, rounds: int = 15, timeout: float = 1800) -> dict:
    """The LeNet twin's three subsampling idioms timed against each other (torch_twins `subsampling`)."""
    if not torch_available():
        return {"skipped": "torch is not installed"}
    return run_json(_twin_cmd("subsampling", threads, "--batch", str(batch), "--rounds", str(rounds)),
                    env=thread_env(threads), timeout=timeout)
