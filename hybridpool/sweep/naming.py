"""The sweep's folder name, from its command line: ``${hybridpool.sweep_name:}`` in ``conf/hydra/default.yaml``."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

from omegaconf import OmegaConf

__all__ = ["register_resolver", "sweep_name"]

RESOLVER = "hybridpool.sweep_name"

#: per-process state: the sweep name computed by the callback (read by the resolver) and the last summary
_STATE: dict[str, Any] = {}


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text)


def sweep_name(overrides: Sequence[str]) -> str:
    """A stable folder name for a sweep: its swept keys and values, readable, plus a hash of all overrides.

    ``["pool=avg,gem", "seed=0,1", "data.num_train=64"]`` -> ``pool-avg+gem_seed-0+1-<8 hex>``. The order of
    the overrides and of the values counts (it fixes the job numbers), as on the command line.
    """
    overrides = [str(o).strip() for o in overrides]
    readable: list[str] = []
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        for o in OverridesParser.create().parse_overrides(overrides):
            if not o.is_sweep_override():
                continue
            key = o.get_key_element().lstrip("+~")
            try:
                values = [str(v) for v in o.sweep_string_iterator()]
            except Exception:  # interval or glob sweeps have no finite list of strings
                values = [o.get_value_element_as_str()]
            readable.append(f"{key}-{'+'.join(values)}")
    except Exception:  # a grammar error surfaces in Hydra itself; the name only needs to be stable
        readable = []
    digest = hashlib.sha256(json.dumps(overrides).encode()).hexdigest()[:8]
    text = _safe("_".join(readable))[:60].strip("-_.+") or "sweep"
    return f"{text}-{digest}"


def _argv_task_overrides(argv: Sequence[str]) -> list[str]:
    """The task overrides of a Hydra command line (fallback when the callback is not configured)."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(list(argv))
    hydra_prefixes = ("hydra.", "hydra/", "+hydra", "++hydra", "~hydra")
    return [o for o in (args.overrides or []) if not o.startswith(hydra_prefixes)]


def _resolve_sweep_name() -> str:
    name = _STATE.get("sweep_name")
    if name:
        return str(name)
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return sweep_name(list(HydraConfig.get().overrides.task))
    except Exception:
        pass
    return sweep_name(_argv_task_overrides(sys.argv[1:]))


def register_resolver() -> None:
    """``${hybridpool.sweep_name:}``: resolved once per sweep (cached), then carried to every job's config."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, _resolve_sweep_name, use_cache=True)


register_resolver()
