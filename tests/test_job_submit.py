"""`ray job submit` of the quickstart to a real local cluster: head with dashboard, token auth on."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
START_TIMEOUT_S = 120
JOB_TIMEOUT_S = 300
# Not uploaded with the working dir (Ray also honours .gitignore): environments, caches, outputs.
UPLOAD_EXCLUDES = [".venv", "venv", ".git", "runs", "results", "**/__pycache__", "*.egg-info",
                   ".pytest_cache", ".ruff_cache"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dashboard_up(url: str) -> bool:
    """True once the dashboard's HTTP server answers (401 without a token counts: it is up)."""
    try:
        urllib.request.urlopen(f"{url}/api/version", timeout=2)
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A head node of our own (its own ports, temp dir and token), stopped by its own pid."""
    try:
        import aiohttp  # noqa: F401  (the dashboard and the Job API need ray[default])
    except ImportError:
        pytest.skip("ray[default] is not installed: the Job API needs the dashboard")
    # Short temp dir: Ray's Unix socket paths under it must stay below ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="srjob", dir="/tmp")
    token_file = tmp_path / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    # Token authentication stays on; the ray CLI, the head, the job's driver and its workers all
    # read the token from RAY_AUTH_TOKEN_PATH (not ~/.ray/auth_token, which we leave alone).
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file),
               RAY_USAGE_STATS_ENABLED="0", PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    dash_port = _free_port()
    ports = {"--port": _free_port(), "--dashboard-port": dash_port,
             "--dashboard-agent-listen-port": _free_port(),
             "--dashboard-agent-grpc-port": _free_port(), "--ray-client-server-port": _free_port(),
             "--node-manager-port": _free_port(), "--object-manager-port": _free_port(),
             "--metrics-export-port": _free_port(), "--runtime-env-agent-port": _free_port()}
    log = (tmp_path / "head.log").open("w")
    # --block keeps `ray start` in the foreground; stopping it stops the processes it started.
    # (`ray stop` would kill every Ray process on the machine, other tests' included.)
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--num-cpus", "2", "--include-dashboard=true",
         "--dashboard-host", "127.0.0.1", "--temp-dir", temp_dir, "--disable-usage-stats",
         *[a for flag, port in ports.items() for a in (flag, str(port))]],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash_port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _dashboard_up(url):
            if head.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = (tmp_path / "head.log").read_text()[-3000:]
                pytest.fail(f"the Ray head did not start (exit {head.poll()}):\n{tail}")
            time.sleep(1)
        yield url, env
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        try:  # anything of this cluster still alive is in the head's own session
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_quickstart_runs_as_a_ray_job(cluster: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    url, env = cluster
    with pytest.raises(urllib.error.HTTPError) as denied:  # token auth is on: no token, no jobs
        urllib.request.urlopen(f"{url}/api/jobs/", timeout=10)
    assert denied.value.code in (401, 403)
    out = tmp_path / "runs"
    cmd = [RAY, "job", "submit", "--address", url, "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps({"excludes": UPLOAD_EXCLUDES}), "--",
           "splitray", "run", "experiments/quickstart.yaml", "--out", str(out),
           "--set", "data.train_samples=128", "--set", "data.test_samples=64",
           "--set", "schedule.phases=[{budget: 4, epochs: 1}, {budget: 128, epochs: 1}]"]
    try:
        job = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the job did not finish in {JOB_TIMEOUT_S} s:\n{(e.stdout or '')[-3000:]}")
    log = job.stdout + job.stderr
    assert job.returncode == 0, log[-4000:]
    assert "succeeded" in log

    (run_dir,) = list(out.iterdir())
    evals = pd.read_parquet(run_dir / "evals.parquet")
    steps = pd.read_parquet(run_dir / "steps.parquet")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["engine"] == "ray"
    assert evals["budget"].tolist() == [4, 128] and evals["epoch"].tolist() == [0, 1]
    assert evals["test_accuracy"].between(0, 1).all()
    assert sorted(steps["client_id"].unique()) == [0, 1, 2, 3]
    last = evals.iloc[-1]
    assert last["cum_bytes_up"] == steps["bytes_up"].sum() > 0
    assert last["samples_seen"] == steps["batch_size"].sum() == 2 * 128
    # Compressed epoch: 4 of 128 channels travel, so it sends far fewer bytes than the full one.
    up = steps.groupby("epoch")["bytes_up"].sum()
    assert up[0] * 10 < up[1]
