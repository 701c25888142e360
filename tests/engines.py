"""Real engines for the tests, on localhost: a one-node SLURM cluster (munge, slurmctld, slurmd) and a Ray head.

Fixtures (session-scoped: started on first use, stopped at the end of the session; conftest.py imports them):

- ``slurm_cluster``: a :class:`SlurmCluster`. munged, slurmctld and slurmd run in the foreground as children of the
  test process, configured in a temporary folder (``slurm.conf``, ``gres.conf``, munge key and socket, state, spool
  and log folders, free ports): one node with 2 CPUs and 2 fake GPUs (gres ``gpu`` on character devices made with
  ``mknod``, or ``/dev/null`` and ``/dev/zero`` where mknod is refused), one partition. Ready when ``sinfo`` shows
  the node idle. There is no accounting (``slurmdbd``): ``sacct`` says "accounting storage is disabled", as on
  small clusters; ``MinJobAge=3600`` keeps ended jobs in ``squeue --states=all`` for the tests to count.
- ``ray_head``: a :class:`RayHead`, ``ray start --head --block`` on free ports with its own temp folder, its own
  working directory and the repository (and tests/) on ``PYTHONPATH``, as on a node with the package installed.
  Stopped by signalling that process, which drains and stops what it started (``ray stop`` would stop every Ray
  instance of the machine, also other people's).

Both skip, saying what is missing, when the engine is not installed, unless ``HYBRIDPOOL_REQUIRE_ENGINES`` is set
(CI sets it, after installing slurm-wlm and munge): then a missing engine fails the tests that need it.
"""

from __future__ import annotations

import contextlib
import getpass
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
REQUIRE_ENV = "HYBRIDPOOL_REQUIRE_ENGINES"
SLURM_PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel", "scontrol")
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])


def engine_missing(what: str, how: str) -> NoReturn:
    """Skip (or, with ``HYBRIDPOOL_REQUIRE_ENGINES`` set, fail) because ``what`` is not available."""
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{what} is not available: {how}; {REQUIRE_ENV} is set, so the engine tests must run", False)
    pytest.skip(f"{what} is not available: {how} (set {REQUIRE_ENV}=1 to make this a failure)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(none)"


def _stop(proc: subprocess.Popen, wait_s: float) -> None:
    """SIGTERM, then SIGKILL to the process group it leads (started with ``start_new_session``)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# ------------------------------------------------------------------------------------------------ SLURM
@dataclass
class SlurmCluster:
    """A running one-node SLURM cluster; its client commands need ``env`` (``SLURM_CONF``)."""

    root: Path
    conf: Path
    node: str
    partition: str
    gpus: int
    gpu_devices: str  # how the fake GPU devices were made
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        env = {**os.environ, **self.env, "PATH": SBIN_PATH}
        done = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: rc={done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def jobs(self) -> dict[str, str]:
        """Every job the controller knows (ended ones too, for an hour), one per array task: ``{id: state}``."""
        out = self.run("squeue", "--noheader", "--array", "--states=all", "--format=%i|%T").stdout
        return dict(line.strip().split("|", 1) for line in out.splitlines() if line.strip())

    def ended(self, job_ids: set[str], timeout: float = 60) -> dict[str, str]:
        """The states of ``job_ids`` once none is still pending, running or completing (a job's result file is
        written before its process exits)."""
        deadline = time.monotonic() + timeout
        while True:
            states = {k: v for k, v in self.jobs().items() if k in job_ids}
            live = {"PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "SUSPENDED"}
            if not live & set(states.values()) or time.monotonic() > deadline:
                return states
            time.sleep(0.5)

    def job_info(self, job_id: str) -> dict[str, str]:
        """``scontrol show job <id>`` as ``{key: value}``."""
        out = self.run("scontrol", "--oneliner", "show", "job", job_id).stdout
        return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)

    def logs(self) -> str:
        """The daemons' log tails (for assertion messages)."""
        return "\n".join(f"--- {p.name}\n{_tail(p)}" for p in sorted((self.root / "log").glob("*.log")))

    def stop(self) -> None:
        """Cancel what is left, let its steps end, stop slurmd, slurmctld and munged (in that order)."""
        if self.procs.get("slurmctld") is not None and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", f"--user={getpass.getuser()}", check=False)
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                live = [s for s in self.jobs().values() if s in ("RUNNING", "COMPLETING", "CONFIGURING")]
                if not live:
                    break
                time.sleep(1)
        for name in ("slurmd", "slurmctld", "munged"):
            if name in self.procs:
                _stop(self.procs[name], wait_s=20)


def _fake_gpu_devices(root: Path, count: int) -> tuple[list[str], str]:
    """Character devices for gres ``gpu`` (slurmd accepts only devices): made with mknod, else existing ones."""
    made = []
    try:
        for i in range(count):
            path = root / f"nvidia{i}"
            os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(195, i))  # NVIDIA's major number; nothing opens them
            made.append(str(path))
        return made, f"character devices 195:0-{count - 1} made with mknod in {root}"
    except OSError as err:
        return ["/dev/null", "/dev/zero"][:count], f"/dev/null and /dev/zero (mknod refused: {err})"


def start_slurm(root: Path) -> SlurmCluster:
    """munged, slurmctld and slurmd for a one-node cluster configured under ``root``; waits until the node is idle."""
    missing = [p for p in SLURM_PROGRAMS if shutil.which(p, path=SBIN_PATH) is None]
    if missing:
        engine_missing("SLURM", f"{', '.join(missing)} not found (apt-get install slurm-wlm munge)")
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        engine_missing("hydra-submitit-launcher", "pip install -e '.[slurm]'")
    for sub in ("munge", "state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "munge").chmod(0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    socket_path = root / "munge" / "munge.socket"
    user, host, node, partition = getpass.getuser(), socket.gethostname().split(".")[0], "node1", "debug"
    devices, how = _fake_gpu_devices(root, 2)
    (root / "gres.conf").write_text("".join(f"NodeName={node} Name=gpu File={d}\n" for d in devices))
    conf = root / "slurm.conf"
    conf.write_text(
        f"""# a one-node test cluster (tests/engines.py)
ClusterName=hybridpool-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_path}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=3600
GresTypes=gpu
NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 Gres=gpu:{len(devices)} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    )
    cluster = SlurmCluster(root, conf, node, partition, len(devices), how)
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": SBIN_PATH}
    commands = {
        "munged": ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={socket_path}",
                   f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/log/munged.log",
                   f"--seed-file={root}/munge/munged.seed"],
        "slurmctld": ["slurmctld", "-D", "-f", str(conf)],
        "slurmd": ["slurmd", "-D", "-f", str(conf), "-N", node],
    }
    try:
        for name, cmd in commands.items():
            with open(root / "log" / f"{name}.stdout", "w") as out:
                cluster.procs[name] = subprocess.Popen(
                    cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=root
                )
            if name == "munged":
                deadline = time.monotonic() + 20
                while not socket_path.exists() and time.monotonic() < deadline:
                    time.sleep(0.1)
        deadline = time.monotonic() + 90
        state = ""
        while time.monotonic() < deadline:
            dead = [n for n, p in cluster.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited")
            done = cluster.run("sinfo", "--noheader", f"--nodes={node}", "--format=%T", check=False)
            state = done.stdout.strip().rstrip("*~#!%$@^-")
            if state == "idle":
                return cluster
            time.sleep(0.5)
        raise RuntimeError(f"node {node} not idle after 90 s (sinfo: {state!r})")
    except Exception as err:
        cluster.stop()
        raise RuntimeError(f"the test SLURM cluster did not start: {err}\n{cluster.logs()}") from err


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A one-node SLURM cluster on localhost for the session (see the module docstring)."""
    root = Path(tempfile.mkdtemp(prefix="hp-slurm-"))
    try:
        cluster = start_slurm(root)
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch) -> SlurmCluster:
    """The session's SLURM cluster, with this test's environment pointing its commands (and sbatch) at it."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    monkeypatch.setenv("PATH", SBIN_PATH)
    return slurm_cluster


# ------------------------------------------------------------------------------------------------ Ray
@dataclass
class RayHead:
    """A running ``ray start --head``: its address and the folder of its session's logs."""

    address: str
    temp_dir: Path
    proc: subprocess.Popen
    log: Path
    token: str

    @property
    def env(self) -> dict[str, str]:
        """What a driver needs to attach (``address: auto`` reads ``RAY_ADDRESS``; the cluster's auth token)."""
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def worker_pids(self) -> set[int]:
        """Process ids of every worker the head's node started (from its log file names)."""
        logs = self.temp_dir / "session_latest" / "logs"
        return {int(p.stem.rsplit("_", 1)[1]) for p in logs.glob("python-core-worker-*_*.log")}

    def stop(self) -> None:
        _stop(self.proc, wait_s=45)


def start_ray_head(temp_dir: Path) -> RayHead:
    """``ray start --head --block`` with 2 CPUs on free ports; waits until it says the runtime started."""
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None:
        engine_missing("Ray", "ray or hydra-ray-launcher not installed (pip install -e '.[ray]')")
    ray_cli = Path(sys.executable).with_name("ray")
    if not ray_cli.is_file():
        found = shutil.which("ray")
        if found is None:
            engine_missing("Ray", "the ray command is not installed next to this Python nor on PATH")
        ray_cli = Path(found)
    port = free_port()
    cmd = [
        str(ray_cli), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
        "--num-cpus=2", "--num-gpus=0", "--object-store-memory=100000000", "--include-dashboard=false",
        "--disable-usage-stats", f"--temp-dir={temp_dir}", f"--ray-client-server-port={free_port()}",
        f"--dashboard-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
    ]
    # the node's own environment: the package (and the tests' job helpers) importable; the driver's HYBRIDPOOL_*,
    # WANDB_* settings are not here (the launcher hands them to the workers). Token authentication (Ray's default
    # for `ray start` where ~/.ray/auth_token exists) with a token of its own, whatever the machine's ~/.ray holds.
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "HYBRIDPOOL_LOG", "WANDB_DIR"))}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), str(HERE)]), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    cwd = temp_dir / "cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    log = temp_dir / "head.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)
    head = RayHead(f"127.0.0.1:{port}", temp_dir, proc, log, token)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start --head exited with {proc.returncode}:\n{_tail(log, 40)}")
        if "Ray runtime started" in log.read_text(errors="replace"):
            return head
        time.sleep(0.5)
    head.stop()
    raise RuntimeError(f"ray start --head did not start in 120 s:\n{_tail(log, 40)}")


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayHead]:
    """A Ray head on localhost for the session (see the module docstring)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="hpray", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        head = start_ray_head(temp_dir)
        try:
            yield head
        finally:
            head.stop()
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
