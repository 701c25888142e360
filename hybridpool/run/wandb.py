"""W&B for one run: a logger that never hangs, and a session that starts, fails and finishes its run.

:class:`WandbSession` is the run's one interface to W&B (:func:`preload` before torch, ``start``,
``record_failure``, ``finish``); loggers are recognised by type (:func:`is_wandb_logger`). The logger itself,
:func:`make_wandb_logger`, is online only when it can work, otherwise offline with the sync command printed.

``WANDB_MODE=online`` on a machine without network makes ``wandb.init`` wait ~100 s and then crash a Lightning
fit. :func:`resolve_wandb_mode` decides without a network round-trip that can hang: online only if

1. the requested mode is ``auto`` or ``online`` and ``WANDB_MODE`` is not ``offline``/``dryrun``/``disabled``,
2. an API key is configured (``WANDB_API_KEY``, or a ``~/.netrc``/``$NETRC`` entry for the W&B host), and
3. the W&B host (``WANDB_BASE_URL``, default ``https://api.wandb.ai``) answers HTTPS within 2 seconds
   (DNS, TCP, verified TLS and an HTTP status line; the probe runs in a daemon thread with a hard deadline);

otherwise offline. Offline runs are written to ``<save_dir>/wandb/offline-run-*`` and can be uploaded later
with ``wandb sync <that folder>`` (:func:`wandb_run_info` gives the command).
"""

from __future__ import annotations

import netrc
import os
import socket
import ssl
import threading
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

__all__ = [
    "WandbSession",
    "is_wandb_logger",
    "make_wandb_logger",
    "preload",
    "read_wandb_run",
    "resolve_wandb_mode",
    "wandb_api_key_configured",
    "wandb_logger_nodes",
    "wandb_run_info",
]

DEFAULT_BASE_URL = "https://api.wandb.ai"
MODES = ("auto", "online", "offline", "disabled")


def _base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def _host_port(url: str) -> tuple[str, int]:
    parsed = urlparse(url if "://" in url else f"https://{url}")
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    return parsed.hostname or "api.wandb.ai", port


def wandb_api_key_configured(base_url: str | None = None) -> bool:
    """Whether an API key is available without asking anyone: ``WANDB_API_KEY`` or a netrc entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host, _ = _host_port(base_url or _base_url())
    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        auth = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def _probe(url: str, timeout: float) -> bool:
    """Whether the W&B server answers HTTP(S) at ``url`` within ``timeout`` seconds, all steps included.

    A bare TCP connect is not enough (an intercepting proxy accepts any connection); the probe completes a
    verified TLS handshake and reads an HTTP status line. It runs in a daemon thread with a hard deadline, so
    a slow DNS lookup or a silent network cannot stall the caller.
    """
    host, port = _host_port(url)
    https = not url.startswith("http://")
    result: list[bool] = []

    def check() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout) as raw:
                sock = ssl.create_default_context().wrap_socket(raw, server_hostname=host) if https else raw
                with sock:
                    sock.sendall(f"HEAD / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                    result.append(sock.recv(16).startswith(b"HTTP/"))
        except (OSError, ValueError):
            result.append(False)

    thread = threading.Thread(target=check, daemon=True, name="wandb-probe")
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def resolve_wandb_mode(requested: str = "auto", timeout: float = 2.0) -> tuple[str, str]:
    """``(mode, reason)``: the W&B mode to use (``online``/``offline``/``disabled``) and why.

    Args:
        requested: ``auto`` (online when possible), ``online`` (same, with a warning when it falls back),
            ``offline`` or ``disabled``.
        timeout: seconds allowed for the connectivity probe.
    """
    if requested not in MODES:
        raise ValueError(f"unknown W&B mode {requested!r}; accepted: {', '.join(MODES)}")
    if requested in ("offline", "disabled"):
        return requested, f"mode={requested} requested"
    env = (os.environ.get("WANDB_MODE") or "").lower()
    if env in ("offline", "dryrun"):
        return "offline", f"WANDB_MODE={env}"
    if env == "disabled" or os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true"):
        return "disabled", "W&B disabled by the environment"
    url = _base_url()
    reason = ""
    if not wandb_api_key_configured(url):
        reason = "no W&B API key configured (wandb login or WANDB_API_KEY)"
    else:
        host, port = _host_port(url)
        if _probe(url, timeout):
            return "online", f"logged in and {host} reachable"
        reason = f"{host}:{port} not reachable within {timeout:g} s"
    if requested == "online":
        warnings.warn(f"W&B mode online requested but {reason}; logging offline instead", stacklevel=2)
    return "offline", reason


def make_wandb_logger(
    project: str = "hybridpool",
    save_dir: str | os.PathLike[str] = ".",
    mode: str = "auto",
    entity: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    name: str | None = None,
    job_type: str | None = "train",
    notes: str | None = None,
    id: str | None = None,
    log_model: bool = False,
    probe_timeout: float = 2.0,
) -> Any:
    """A Lightning ``WandbLogger`` whose mode is decided by :func:`resolve_wandb_mode` (never a long hang).

    Args:
        project, entity, group, tags, name, job_type, notes: the W&B run's fields (group = experiment name).
        save_dir: folder under which W&B writes ``wandb/<run>`` (the run's output folder).
        mode: ``auto``, ``online``, ``offline`` or ``disabled``.
        id: resume this W&B run id (``resume="allow"``).
        log_model: upload checkpoints as artifacts (online only).
    """
    from pytorch_lightning.loggers import WandbLogger

    resolved, reason = resolve_wandb_mode(mode, timeout=probe_timeout)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    tags = [str(t)[:64] for t in dict.fromkeys(tags or [])]  # unique, W&B limits tags to 64 chars
    logger = WandbLogger(
        project=project,
        save_dir=os.fspath(save_dir),
        entity=entity,
        group=group,
        tags=tags,
        name=name,
        job_type=job_type,
        notes=notes,
        id=id,
        log_model=log_model if resolved == "online" else False,
        mode=resolved,
    )
    # Lightning passes anonymous=None, which W&B (0.19+) warns about on every run: the setting does nothing
    logger._wandb_init.pop("anonymous", None)
    logger.hybridpool_mode = resolved
    logger.hybridpool_mode_reason = reason
    return logger


def wandb_run_info(logger: Any) -> dict[str, Any] | None:
    """``{mode, reason, id, project, group, dir, url, sync_command}`` of a logger made by
    :func:`make_wandb_logger`.

    Only reads an already-started run (``None`` if the experiment was never created).
    """
    run = getattr(logger, "_experiment", None)
    if run is None:
        return None
    mode = getattr(logger, "hybridpool_mode", None)
    settings = getattr(run, "settings", None)
    run_dir = getattr(settings, "sync_dir", None) if settings is not None else None
    info: dict[str, Any] = {
        "mode": mode,
        "reason": getattr(logger, "hybridpool_mode_reason", None),
        "id": getattr(run, "id", None),
        "project": getattr(run, "project", None),
        "group": getattr(run, "group", None),
        "dir": run_dir,
        "url": None,
        "sync_command": None,
    }
    if mode == "online":
        try:
            info["url"] = run.get_url() if hasattr(run, "get_url") else getattr(run, "url", None)
        except Exception:
            info["url"] = None
    elif mode == "offline" and run_dir:
        info["sync_command"] = f"wandb sync {run_dir}"
    return info


def _wandb_cli() -> str:
    import shutil
    import sys

    beside = Path(sys.executable).parent / "wandb"
    found = str(beside) if beside.is_file() else shutil.which("wandb")
    if not found:
        raise FileNotFoundError("the wandb command-line tool is not installed (pip install wandb)")
    return found


def read_wandb_run(path: str | os.PathLike[str], timeout: float = 120.0) -> dict[str, Any]:
    """Read a local W&B run back from its ``.wandb`` file (``wandb leet inspect``), without any server.

    Args:
        path: a ``run-*.wandb`` file, its ``offline-run-*`` folder, or a ``wandb/`` folder (latest run).

    Returns:
        ``{"run_id", "project", "tags", "state", "exit_code", "config": {...}, "summary": {...},
        "history": [{metric: value, ...} per logged step]}``.
    """
    import json
    import subprocess

    cli = _wandb_cli()
    p = os.fspath(path)

    def run(*args: str) -> str:
        done = subprocess.run(
            [cli, "leet", "inspect", *args, p], capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"wandb leet inspect {' '.join(args)} {p} failed: {done.stderr.strip()[-2000:]}")
        return done.stdout

    state = json.loads(run("--summary", "--json"))
    history: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    for line in run("--json").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("type") == "history":
            history.append(rec["history"].get("item", {}))
        elif rec.get("type") == "config":
            config.update(rec["config"].get("update", {}))
    return {
        "run_id": state.get("run_id"),
        "project": state.get("project"),
        "tags": state.get("tags", []),
        "state": state.get("state"),
        "exit_code": state.get("exit_code"),
        "config": state.get("config") or config,
        "summary": state.get("summary", {}),
        "history": history,
    }


# --------------------------------------------------------------------------------------------- one run's session
def is_wandb_logger(logger: Any) -> bool:
    """Whether an instantiated Lightning logger logs to W&B (by type)."""
    from pytorch_lightning.loggers import WandbLogger

    return isinstance(logger, WandbLogger)


#: Lightning's W&B logger class, under both package names
_WANDB_LOGGER_CLASSES = ("pytorch_lightning.loggers.WandbLogger", "lightning.pytorch.loggers.WandbLogger")


def _builds_wandb_logger(node: Any) -> bool:
    """Whether a logger config node builds a W&B logger: :func:`make_wandb_logger` or a ``WandbLogger`` (subclass).

    The target is resolved and compared as an object when its module is hybridpool's or already imported; a
    target in a module not yet imported (Lightning, before torch is loaded) is compared by its exact path, so
    that asking never imports torch.
    """
    import sys

    from hydra.utils import get_object

    target_path = str(node.get("_target_", ""))
    module = target_path.rpartition(".")[0]
    if not (module.startswith("hybridpool.") or module in sys.modules):
        return target_path in _WANDB_LOGGER_CLASSES
    try:
        target = get_object(target_path)
    except Exception:
        return False
    if target is make_wandb_logger:
        return True
    return isinstance(target, type) and any(c.__name__ == "WandbLogger" for c in target.__mro__)


def wandb_logger_nodes(cfg: Any) -> list[Any]:
    """The logger nodes of a run config (``cfg.logger``) that build a W&B logger."""
    nodes = (cfg.get("logger") or {}).values()
    return [n for n in nodes if n is not None and "_target_" in n and _builds_wandb_logger(n)]


def preload(cfg: Any) -> None:
    """Import what ``wandb.init`` imports on its first call, before torch and Lightning, when W&B will log.

    ``wandb.init`` imports W&B Launch's modules, whose pydantic models read their field docstrings through
    ``inspect.getmodule``, which scans ``sys.modules``: slow with torch, Lightning and torchvision loaded (4,000
    modules), much faster before them. It matters in every fresh process (each worker's first job; every job
    under the Ray plugin's own launcher on GPUs): ``scripts/bench_sweep.py`` records the W&B init of each job.
    """
    nodes = wandb_logger_nodes(cfg)
    if not nodes or all(str(n.get("mode", "auto")) == "disabled" for n in nodes):
        return
    import contextlib

    with contextlib.suppress(Exception):  # an optimisation only: W&B's module layout is not an API
        import wandb.sdk.launch.inputs.internal  # noqa: F401


class WandbSession:
    """The W&B side of one run: the logger's arguments, :meth:`start`, :meth:`record_failure`, :meth:`finish`.

    Args:
        container: the run's resolved config (logged as the W&B config with the job's identity).
        job: the run's ``job`` description (number and overrides in a sweep).
        previous: the record of an earlier attempt: a resumed run keeps its W&B run id.
        group, name: the W&B group and run name the launcher chose (``None``: the logger config's).
    """

    def __init__(
        self,
        container: dict[str, Any],
        job: dict[str, Any],
        previous: dict[str, Any] | None = None,
        group: str | None = None,
        name: str | None = None,
    ) -> None:
        self.container = container
        self.job = job
        self.previous = previous or {}
        self.group = group
        self.name = name
        self.info: dict[str, Any] | None = None

    def logger_kwargs(self, node: Any, tags: list[str] | None = None) -> dict[str, Any]:
        """Arguments added to a W&B logger node: the earlier attempt's run id, the sweep's group and name, tags."""
        kwargs: dict[str, Any] = {}
        wid = (self.previous.get("wandb") or {}).get("id")
        if wid and node.get("id") is None:
            kwargs["id"] = wid
        if self.group and node.get("group") in (None, self.container.get("task_name")):
            kwargs["group"] = self.group
        if self.name and node.get("name") is None:
            kwargs["name"] = self.name[:128]
        if tags is not None:
            kwargs["tags"] = tags
        return kwargs

    def start(self, loggers: list[Any], wait_s: float = 60.0) -> dict[str, Any] | None:
        """Start the W&B run now (so its folder is known even if fit fails), then log the config to every logger.

        Resuming a run whose earlier process was killed (SIGKILL, a lost node) can find W&B's service of that
        process still holding the run id for a while ("run ID ... is in use"); the start is then retried every 2 s
        for up to ``wait_s`` seconds.
        """
        for lg in loggers:
            if is_wandb_logger(lg):
                _open_experiment(lg, wait_s)
                self.info = wandb_run_info(lg)
        for lg in loggers:
            lg.log_hyperparams({**self.container, "job": self.job})
        return self.info

    def summarize(self, loggers: list[Any], metrics: dict[str, float]) -> None:
        """Put the final val/test metrics and ``status: completed`` into the W&B run's summary."""
        summary = {f"final/{k}": v for k, v in metrics.items() if k.startswith(("val/", "test/", "test_"))}
        for lg in loggers:
            if is_wandb_logger(lg):
                lg.experiment.summary.update({**summary, "status": "completed"})

    def record_failure(self, cfg: Any, record: dict[str, Any]) -> dict[str, Any] | None:
        """Put a failed run's status, error and traceback (from its ``record`` data) into its W&B run's summary;
        start a W&B run if it failed before W&B did.

        Best effort: W&B trouble never hides the run's own error. Returns the W&B run's info (or ``None``).
        """
        from hybridpool.run.console import say

        failure = {"status": record.get("status"), "error": record.get("error")}
        failure["traceback"] = (record.get("traceback") or "")[-4000:]
        try:
            import wandb

            if wandb.run is None:
                nodes = wandb_logger_nodes(cfg)
                if not nodes:
                    return self.info
                from hydra.utils import instantiate

                lg = instantiate(nodes[0], _convert_="all", **self.logger_kwargs(nodes[0]))
                self.start([lg])
            if wandb.run is not None:
                wandb.run.summary.update(failure)
        except Exception as err:
            say(f"warning: could not record the failure in W&B: {err}")
        return self.info

    @staticmethod
    def finish(loggers: list[Any], ok: bool) -> None:
        """Close the W&B run (each job of a multirun is its own run) and detach the loggers from it."""
        import sys

        if "wandb" not in sys.modules:
            return
        import wandb

        from hybridpool.run.console import say

        try:
            if wandb.run is not None:
                wandb.finish(exit_code=0 if ok else 1)
        except Exception as err:  # never hide the run's own error behind a W&B one
            say(f"warning: wandb.finish() failed: {err}")
        for lg in loggers:
            if hasattr(lg, "_experiment"):
                lg._experiment = None


def _open_experiment(logger: Any, wait_s: float) -> None:
    """``logger.experiment`` (W&B init), retried while the run id is still held by a dead process's service."""
    import time

    from hybridpool.run.console import say

    deadline = time.monotonic() + wait_s
    while True:
        try:
            _ = logger.experiment
            return
        except Exception as err:
            if "is in use" not in str(err) or time.monotonic() >= deadline:
                raise
            say(f"W&B: {err}; retrying in 2 s (the interrupted attempt's W&B service may still hold the run)")
            time.sleep(2.0)
