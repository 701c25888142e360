"""Where datasets live, and the error raised when one is missing."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ROOT_ENV", "DatasetNotFoundError", "resolve_root"]

#: Environment variable naming the folder that holds every dataset (CI points it at ``../shared/data``).
DATA_ROOT_ENV = "HYBRIDPOOL_DATA_ROOT"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not where the datamodule looked; the message says where it looked and how to get it."""

    def __init__(self, dataset: str, looked_in: str | Path, how_to_get: str, root: str | Path | None = None):
        self.dataset = dataset
        self.looked_in = str(looked_in)
        self.how_to_get = how_to_get
        root_note = f" (data root: {root})" if root is not None else ""
        message = (
            f"{dataset} not found: looked in {self.looked_in}{root_note}. "
            f"Set the data root with the environment variable {DATA_ROOT_ENV} or the config key "
            f"data.root=/path/to/data (constructor argument root=...). "
            f"How to get it: {how_to_get}"
        )
        super().__init__(message)


def resolve_root(root: str | os.PathLike[str] | None) -> Path:
    """The data root: ``root`` if given, else ``$HYBRIDPOOL_DATA_ROOT`` if set, else ``./data``.

    ``~`` and environment variables inside the path are expanded; the result is absolute.
    """
    if root is None or str(root) == "":
        root = os.environ.get(DATA_ROOT_ENV) or "./data"
    return Path(os.path.expandvars(os.path.expanduser(str(root)))).absolute()
