"""Defaults, the PROM_LOCAL_* environment variables and the paths they choose, in one place.

Every variable is read when a function here is called, never at import: a test (or a long-running
TUI) that sets one after `import prom_local` sees it. Nothing here imports the rest of the package,
so every layer may use it.
"""

from __future__ import annotations

import os
from pathlib import Path

# The model `--model` means when none is given, and the prompt profile a model without one gets.
# Both are the Korean Prometheus judge this project exists for; they are one name on purpose.
DEFAULT_PROFILE = "prometheus-ko"
DEFAULT_MODEL = DEFAULT_PROFILE

# Environment variables, by what they set. typer reads MODEL, MEMORY_BUDGET and API_KEY itself
# (envvar= on the option); the rest are read by the functions below.
ENV_MODEL = "PROM_LOCAL_MODEL"
ENV_MODELS = "PROM_LOCAL_MODELS"
ENV_CONFIG_DIR = "PROM_LOCAL_CONFIG_DIR"
ENV_API_KEY = "PROM_LOCAL_API_KEY"                 # the server's key (serve)
# A --server client's own key: one variable for both would send the server's key to any URL.
ENV_SERVER_API_KEY = "PROM_LOCAL_SERVER_API_KEY"
ENV_MEMORY_BUDGET = "PROM_LOCAL_MEMORY_BUDGET"
ENV_RAY_PLACEMENT_TIMEOUT = "PROM_LOCAL_RAY_PLACEMENT_TIMEOUT"

# How long a Ray actor may wait to be placed (its node busy, its resources taken) before we give up.
RAY_PLACEMENT_TIMEOUT_S = 180.0


def models_dir(explicit: str | Path | None = None) -> Path:
    """The model store: --models, else $PROM_LOCAL_MODELS, else ./models in a checkout (it holds
    registry.json), else the user data dir."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_MODELS)
    if env:
        return Path(env)
    local = Path.cwd() / "models"
    if (local / "registry.json").exists():
        return local
    from platformdirs import user_data_path

    return user_data_path("prom-local") / "models"


def config_dir() -> Path:
    """Where saved rubrics live: $PROM_LOCAL_CONFIG_DIR, else the user config dir."""
    env = os.environ.get(ENV_CONFIG_DIR)
    if env:
        return Path(env)
    from platformdirs import user_config_path

    return user_config_path("prom-local")


def serve_data_dir() -> Path:
    """Where `serve` keeps the Batch API's files, batches and results without --data-dir."""
    from platformdirs import user_data_path

    return user_data_path("prom-local") / "serve"


def ray_placement_timeout_s() -> float:
    """$PROM_LOCAL_RAY_PLACEMENT_TIMEOUT seconds, else RAY_PLACEMENT_TIMEOUT_S."""
    return float(os.environ.get(ENV_RAY_PLACEMENT_TIMEOUT) or RAY_PLACEMENT_TIMEOUT_S)
