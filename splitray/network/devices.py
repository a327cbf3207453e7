"""Device profiles: effective training throughput of client and server hardware.

Throughputs are sustained fp32 training rates of small CNNs in PyTorch (forward plus backward),
well below peak. A FLOP here is one floating-point operation, so a multiply-add counts as two,
the convention of the peak figures quoted; model FLOP counts must use the same convention.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceProfile:
    """A compute device: its effective sustained training throughput and where it comes from."""

    name: str
    flops_per_s: float  # effective sustained training throughput (not peak), FLOP/s
    description: str  # where the figure comes from


def _profile(name: str, flops_per_s: float, description: str) -> DeviceProfile:
    return DeviceProfile(name=name, flops_per_s=flops_per_s, description=description)


DEVICE_PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        _profile(
            "raspberry_pi_4",
            6e9,
            "Raspberry Pi 4: 4x Cortex-A72 @ 1.5 GHz, 8 fp32 FLOP/cycle/core (one 128-bit NEON "
            "FMA per cycle) = 48 GFLOP/s peak; HPL reaches only ~8-12 GFLOP/s fp64 and PyTorch "
            "conv training on 4 GB/s LPDDR4 sustains ~12% of fp32 peak -> 6 GFLOP/s.",
        ),
        _profile(
            "jetson_nano",
            60e9,
            "Jetson Nano: 128 Maxwell CUDA cores @ 921 MHz = 236 GFLOP/s fp32 peak, 25.6 GB/s "
            "memory shared with the CPU; PyTorch fp32 training at small batches sustains ~25% "
            "-> 60 GFLOP/s.",
        ),
        _profile(
            "phone_midrange",
            15e9,
            "Mid-range phone SoC (e.g. Snapdragon 7-series): 4x Cortex-A78 @ 2.2-2.4 GHz, "
            "16 fp32 FLOP/cycle/core = ~145 GFLOP/s peak on the big cores; on-device CPU "
            "training under thermal limits sustains ~10% -> 15 GFLOP/s.",
        ),
        _profile(
            "laptop_cpu",
            80e9,
            "Laptop CPU: 4 cores with AVX2 and two FMA units (32 fp32 FLOP/cycle/core) at "
            "~2.5 GHz all-core = 320 GFLOP/s peak; PyTorch (oneDNN) conv training sustains "
            "~25% -> 80 GFLOP/s.",
        ),
        _profile(
            "laptop_cpu_core",
            20e9,
            "One core of laptop_cpu (80 GFLOP/s / 4): the unit of the Prune-Deprune testbed, "
            "where each data source is capped at 40% of a laptop core (use cpu_share=0.4).",
        ),
        _profile(
            "jetson_xavier_nx",
            250e9,
            "Embedded GPU of the Prune-Deprune testbed server (rated ~21-22 TOPS int8): Jetson "
            "Xavier NX, 384 Volta CUDA cores @ 1.1 GHz = 845 GFLOP/s fp32 peak; PyTorch fp32 "
            "training sustains ~30% -> 250 GFLOP/s.",
        ),
        _profile(
            "server_cpu",
            1e12,
            "Server CPU: 32 cores with AVX-512 and two FMA units (64 fp32 FLOP/cycle/core) at "
            "~2.2 GHz AVX-512 all-core = 4.5 TFLOP/s peak; PyTorch conv training sustains "
            "~22% -> 1 TFLOP/s.",
        ),
        _profile(
            "datacenter_gpu",
            25e12,
            "NVIDIA A100: 19.5 TFLOP/s fp32, 156 TFLOP/s TF32 tensor-core peak; PyTorch TF32 "
            "ResNet-50 training runs ~1,000 images/s x 24.6 GFLOP per image (3 x 8.2 GFLOP "
            "forward) = ~25 TFLOP/s sustained. Small CIFAR-size batches reach less.",
        ),
    )
}


def get_device_profile(spec: str | Mapping) -> DeviceProfile:
    """A DEVICE_PROFILES entry by name, or a custom {"name", "flops_per_s"[, "description"]}."""
    if isinstance(spec, str):
        if spec not in DEVICE_PROFILES:
            raise ValueError(
                f"device profile {spec!r} is unknown; allowed: {', '.join(sorted(DEVICE_PROFILES))}"
            )
        return DEVICE_PROFILES[spec]
    if not isinstance(spec, Mapping):
        raise ValueError(f"device spec must be a profile name or a mapping, got {spec!r}")
    allowed = {"name", "flops_per_s", "description"}
    for key in spec:
        if key not in allowed:
            raise ValueError(f"device spec key {key!r} is unknown; allowed: {sorted(allowed)}")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"device spec name={name!r} must be a non-empty string")
    if "flops_per_s" not in spec:
        if set(spec) - {"name"}:
            raise ValueError("device spec with a description needs flops_per_s")
        return get_device_profile(name)
    flops_per_s = spec["flops_per_s"]
    if (
        isinstance(flops_per_s, bool)
        or not isinstance(flops_per_s, numbers.Real)
        or not math.isfinite(flops_per_s)
        or flops_per_s <= 0
    ):
        raise ValueError(f"device spec flops_per_s={flops_per_s!r} must be a positive number")
    description = spec.get("description", "custom device")
    if not isinstance(description, str):
        raise ValueError(f"device spec description={description!r} must be a string")
    return DeviceProfile(name=name, flops_per_s=float(flops_per_s), description=description)


def compute_time_s(flops: float, profile: DeviceProfile, cpu_share: float = 1.0) -> float:
    """Seconds `profile` needs for `flops` FLOPs when it gets `cpu_share` in (0, 1] of itself.

    cpu_share models a CPU cap such as the paper's 40%-of-a-core limit (with a per-core profile).
    """
    if isinstance(flops, bool) or not isinstance(flops, numbers.Real) or not math.isfinite(flops):
        raise ValueError(f"flops={flops!r} must be a finite number >= 0")
    if flops < 0:
        raise ValueError(f"flops={flops!r} must be >= 0")
    if not isinstance(cpu_share, numbers.Real) or not 0 < cpu_share <= 1:
        raise ValueError(f"cpu_share={cpu_share!r} must be in (0, 1]")
    return float(flops) / (profile.flops_per_s * cpu_share)
