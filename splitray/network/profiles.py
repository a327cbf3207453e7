"""Named link profiles users pick in configs, and `build_link` turning a spec into a link.

Constant figures are typical measured application-level (TCP goodput) rates, not PHY rates;
latency_s is the one-way delay, i.e. half a typical round-trip time.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path

from splitray.network.links import ConstantLink, Link, SharedMedium, TraceLink

LINK_PROFILES: dict[str, dict] = {
    # Wi-Fi 6 (802.11ax), one 80 MHz channel in 5 GHz with 2x2 clients: PHY rate 1201 Mbit/s;
    # about 40-50% of the PHY rate survives MAC and TCP overhead at a few metres, so ~500 Mbit/s
    # down; uplink lower (stations contend, no uplink OFDMA in common gear). Shared by all
    # stations on the channel, as in the Prune-Deprune testbed (8 sources on one Wi-Fi 6
    # channel). LAN round trip ~4 ms.
    "wifi6_shared": {
        "kind": "shared",
        "up_bps": 400e6,
        "down_bps": 500e6,
        "latency_s": 0.002,
    },
    # Wi-Fi 5 (802.11ac), 80 MHz, 2x2 client, own channel: PHY 867 Mbit/s; measured TCP goodput
    # tops out near 360 Mbit/s at ~10 m. LAN round trip ~4 ms.
    "wifi5": {"kind": "constant", "up_bps": 300e6, "down_bps": 360e6, "latency_s": 0.002},
    # Gigabit Ethernet: TCP goodput 1000 * 1448/1538 = 941 Mbit/s (1500-byte MTU, timestamps);
    # one-way delay from the Prune-Deprune paper's measured Ethernet RTT of 0.670 ms.
    "ethernet_1g": {
        "kind": "constant",
        "up_bps": 941e6,
        "down_bps": 941e6,
        "latency_s": 0.000335,
    },
    # LTE: order of the crowd-sourced national averages (2021-22) in the U.S.: ~30 Mbit/s down,
    # ~8 Mbit/s up, ~50 ms round trip. The cellular traces below span 0.5-17 Mbit/s.
    "lte": {"kind": "constant", "up_bps": 8e6, "down_bps": 30e6, "latency_s": 0.025},
    # 5G mid-band (sub-6 GHz, non-standalone): ~150 Mbit/s down, ~15 Mbit/s up (the uplink
    # often stays on LTE), ~30 ms round trip.
    "5g": {"kind": "constant", "up_bps": 15e6, "down_bps": 150e6, "latency_s": 0.015},
    # Real cellular traces (Saturator recordings, Winstein et al. NSDI 2013) under the traces
    # root; the mean rates are in shared/data/README.md. The traces give capacity only, so the
    # latency is a typical one-way base delay of the technology: LTE ~25 ms, UMTS/HSPA ~45 ms,
    # EV-DO ~60 ms (round trips of about 50, 90 and 120 ms).
    "att_lte_driving": {
        "kind": "trace",
        "up": "ATT-LTE-driving.up",
        "down": "ATT-LTE-driving.down",
        "latency_s": 0.025,
    },
    "att_lte_driving_2016": {
        "kind": "trace",
        "up": "ATT-LTE-driving-2016.up",
        "down": "ATT-LTE-driving-2016.down",
        "latency_s": 0.025,
    },
    "tmobile_lte_short": {
        "kind": "trace",
        "up": "TMobile-LTE-short.up",
        "down": "TMobile-LTE-short.down",
        "latency_s": 0.025,
    },
    "verizon_lte_short": {
        "kind": "trace",
        "up": "Verizon-LTE-short.up",
        "down": "Verizon-LTE-short.down",
        "latency_s": 0.025,
    },
    "tmobile_umts_driving": {
        "kind": "trace",
        "up": "TMobile-UMTS-driving.up",
        "down": "TMobile-UMTS-driving.down",
        "latency_s": 0.045,
    },
    "verizon_evdo_driving": {
        "kind": "trace",
        "up": "Verizon-EVDO-driving.up",
        "down": "Verizon-EVDO-driving.down",
        "latency_s": 0.06,
    },
}

_KEYS = {
    "constant": {"required": {"up_bps", "down_bps"}, "optional": {"latency_s", "jitter_s"}},
    "shared": {"required": {"up_bps", "down_bps"},
               "optional": {"latency_s", "jitter_s", "half_duplex", "allocation", "shares"}},
    "trace": {"required": {"up", "down"}, "optional": {"latency_s", "jitter_s"}},
}


def default_traces_root() -> Path | None:
    """$SPLITRAY_DATA/net-traces/cellular when SPLITRAY_DATA is set, else None."""
    data_root = os.environ.get("SPLITRAY_DATA")
    return Path(data_root) / "net-traces" / "cellular" if data_root else None


def _resolve_trace(value: object, key: str, traces_root: Path | None) -> Path:
    if not isinstance(value, (str, Path)) or not str(value):
        raise ValueError(f"link spec {key}={value!r} must be a trace file path")
    path = Path(value)
    if not path.is_absolute() and traces_root is not None:
        path = traces_root / path
    if not path.is_file():
        raise FileNotFoundError(
            f"trace file {path} (link spec {key}={str(value)!r}) not found; relative trace "
            "paths resolve against traces_root, by default $SPLITRAY_DATA/net-traces/cellular: "
            "set SPLITRAY_DATA to the data root (e.g. ../shared/data)"
        )
    return path


def _number(spec: Mapping, key: str, default: float | None = None) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"link spec {key}={value!r} must be a finite number")
    return float(value)


def build_link(spec: Mapping | str, traces_root: str | Path | None = None) -> Link:
    """Build a link from a LINK_PROFILES name or a dict {"kind": "constant"|"trace"|"shared", ...}.

    Relative trace paths resolve against `traces_root` (default: $SPLITRAY_DATA/net-traces/
    cellular). A bad spec raises ValueError naming the key; a missing trace FileNotFoundError.
    """
    if isinstance(spec, str):
        if spec not in LINK_PROFILES:
            raise ValueError(
                f"link profile {spec!r} is unknown; allowed: {', '.join(sorted(LINK_PROFILES))}"
            )
        spec = LINK_PROFILES[spec]
    if not isinstance(spec, Mapping):
        raise ValueError(f"link spec must be a profile name or a mapping, got {spec!r}")
    kind = spec.get("kind")
    if kind not in _KEYS:
        raise ValueError(f"link spec kind={kind!r} is not allowed; use one of {sorted(_KEYS)}")
    keys = _KEYS[kind]
    for key in spec:
        if key != "kind" and key not in keys["required"] | keys["optional"]:
            allowed = ", ".join(sorted(keys["required"] | keys["optional"]))
            raise ValueError(
                f"link spec key {key!r} is unknown for kind {kind!r}; allowed: {allowed}"
            )
    for key in sorted(keys["required"]):
        if key not in spec:
            raise ValueError(f"link spec of kind {kind!r} is missing required key {key!r}")
    latency_s = _number(spec, "latency_s", 0.0)
    jitter_s = _number(spec, "jitter_s", 0.0)
    for key, value in (("latency_s", latency_s), ("jitter_s", jitter_s)):
        if value < 0:
            raise ValueError(f"link spec {key}={value!r} must be >= 0 seconds")
    if kind == "trace":
        root = Path(traces_root) if traces_root is not None else default_traces_root()
        up = _resolve_trace(spec["up"], "up", root)
        down = _resolve_trace(spec["down"], "down", root)
        return TraceLink(up, down, latency_s=latency_s, jitter_s=jitter_s)
    up_bps = _number(spec, "up_bps")
    down_bps = _number(spec, "down_bps")
    for key, value in (("up_bps", up_bps), ("down_bps", down_bps)):
        if value <= 0:
            raise ValueError(f"link spec {key}={value!r} must be > 0 bit/s")
    if kind == "constant":
        return ConstantLink(up_bps, down_bps, latency_s=latency_s, jitter_s=jitter_s)
    half_duplex = spec.get("half_duplex", False)
    if not isinstance(half_duplex, bool):
        raise ValueError(f"link spec half_duplex={half_duplex!r} must be true or false")
    shares = spec.get("shares")
    if shares is not None and (not isinstance(shares, list)
                               or any(isinstance(x, bool) or not isinstance(x, numbers.Real)
                                      for x in shares)):
        raise ValueError(f"link spec shares={shares!r} must be a list of numbers")
    return SharedMedium(up_bps, down_bps, latency_s=latency_s, jitter_s=jitter_s,
                        half_duplex=half_duplex,
                        allocation=spec.get("allocation", "processor_sharing"), shares=shares)
