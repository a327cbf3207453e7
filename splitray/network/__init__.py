"""Network and device model of the simulator: links, shared media, traces, device speeds.

Pure Python and numpy (no Ray, no torch): turns payload bytes and FLOPs into simulated seconds.
"""

from splitray.network.devices import (
    DEVICE_PROFILES,
    DeviceProfile,
    compute_time_s,
    get_device_profile,
)
from splitray.network.links import (
    MAHIMAHI_PACKET_BYTES,
    ConstantLink,
    Link,
    SharedMedium,
    TraceLink,
    Transfer,
    load_mahimahi_trace,
    trace_mean_bps,
)
from splitray.network.model import NetworkModel
from splitray.network.profiles import LINK_PROFILES, build_link, default_traces_root

__all__ = [
    "DEVICE_PROFILES",
    "LINK_PROFILES",
    "MAHIMAHI_PACKET_BYTES",
    "ConstantLink",
    "DeviceProfile",
    "Link",
    "NetworkModel",
    "SharedMedium",
    "TraceLink",
    "Transfer",
    "build_link",
    "compute_time_s",
    "default_traces_root",
    "get_device_profile",
    "load_mahimahi_trace",
    "trace_mean_bps",
]
