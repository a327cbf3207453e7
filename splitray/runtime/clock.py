"""The virtual clock: turns each round's work and payload bytes into simulated step times.

A round is one step of every active client, synchronous as in parallel split learning: it starts
when the last client finished the previous round. Within it each client computes its forward,
uploads (the network model decides when the last byte arrives, sharing included), waits for the one
server (which serves requests in arrival order, ties by client id), the server computes, the
gradient comes down, and the client computes its backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from splitray.network import DeviceProfile, NetworkModel, Transfer, compute_time_s


@dataclass(frozen=True)
class StepTimes:
    """One client's simulated timeline for one step, in seconds."""

    start_s: float
    client_compute_s: float
    uplink_s: float
    server_wait_s: float
    server_compute_s: float
    downlink_s: float
    end_s: float


class VirtualClock:
    """Simulated time of every client and of the server; deterministic for a given config."""

    def __init__(self, network: NetworkModel, client_devices: list[DeviceProfile],
                 server_device: DeviceProfile, cpu_share: float = 1.0,
                 compute_time: str = "flops", measured_scale: float = 1.0) -> None:
        self.network = network
        self.client_devices = client_devices
        self.server_device = server_device
        self.cpu_share = cpu_share
        self.compute_time = compute_time
        self.measured_scale = measured_scale
        self.now_s = 0.0  # end of the last round

    def _compute_s(self, flops: float, host_s: float, device: DeviceProfile, share: float) -> float:
        if self.compute_time == "measured":
            return host_s * self.measured_scale
        return compute_time_s(flops, device, share)

    def client_compute_s(self, client_id: int, flops: float, host_s: float) -> float:
        return self._compute_s(flops, host_s, self.client_devices[client_id], self.cpu_share)

    def server_compute_s(self, flops: float, host_s: float) -> float:
        return self._compute_s(flops, host_s, self.server_device, 1.0)

    def uplink(self, fwd_s: dict[int, float], bytes_up: dict[int, int]) -> dict[int, float]:
        """Arrival time at the server of each client's payload this round."""
        ids = sorted(fwd_s)
        transfers = [Transfer(i, self.now_s + fwd_s[i], bytes_up[i]) for i in ids]
        return dict(zip(ids, self.network.schedule("up", transfers), strict=True))

    @staticmethod
    def server_order(arrivals: dict[int, float]) -> list[int]:
        """The order in which the server takes the payloads: simulated arrival, ties by client id."""
        return sorted(arrivals, key=lambda i: (arrivals[i], i))

    def finish_round(self, fwd_s: dict[int, float], arrivals: dict[int, float],
                     server_s: dict[int, float], bytes_down: dict[int, int],
                     bwd_s: dict[int, float]) -> dict[int, StepTimes]:
        """Serve the round's requests, send gradients down, and advance the clock."""
        start = self.now_s
        server_free = start
        served: dict[int, tuple[float, float]] = {}
        for i in self.server_order(arrivals):
            begin = max(arrivals[i], server_free)
            server_free = begin + server_s[i]
            served[i] = (begin, server_free)
        ids = sorted(served)
        downs = self.network.schedule(
            "down", [Transfer(i, served[i][1], bytes_down[i]) for i in ids])
        times = {}
        for i, down_end in zip(ids, downs, strict=True):
            begin, done = served[i]
            end = down_end + bwd_s[i]
            times[i] = StepTimes(
                start_s=start, client_compute_s=fwd_s[i] + bwd_s[i],
                uplink_s=arrivals[i] - (start + fwd_s[i]), server_wait_s=begin - arrivals[i],
                server_compute_s=server_s[i], downlink_s=down_end - done, end_s=end)
        self.now_s = max(t.end_s for t in times.values())
        return times
