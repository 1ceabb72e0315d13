"""Benchmarks of the real training step, the input pipeline and the PyTorch peers (`alexnet-jax bench`).

    step.py         the Trainer's train step on synthetic data already on the device: compile time,
                    step time, img/s, MFU, peak memory
    profile.py      per-op device time of that step from a jax.profiler trace, named by layer through
                    the HLO reader of alexnet_jax/comms.py
    peers.py        the PyTorch peers and exact torch twins, each in a subprocess, and ours/torch ratios
                    against the fastest torch configuration and each
    torch_twins.py  the twins: torch modules computing exactly our functions (CIFAR AlexNet, LeNet-5),
                    timed eager and torch.compile, contiguous and channels_last, float32 or bf16 autocast
    protocol.py     the timing protocol both sides follow and record (warm-up, timed repetitions, statistic)
    peak.py         the machine's achievable matmul FLOP/s (jax and torch), the yardstick for a step's FLOP/s
    lenet.py        one MNIST epoch of LeNet-5 against the shipped LeNet peer and our lenet5's twin
    inputs.py       the input pipeline per host core, and the on-device augmentation's share of the step

Nothing here imports tensorflow-datasets except inputs.py, so the step benchmark runs on a
bare GPU image with jax, flax, optax and orbax.
"""
