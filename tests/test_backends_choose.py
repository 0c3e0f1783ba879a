"""backends/choose.py, the one place that picks where records are graded: the local Judge is made
only when chosen, a server and a cluster together are refused, and --model is held against what the
server serves. (The server and Ray paths themselves: test_remote.py, test_ray.py.)"""

from __future__ import annotations

import pytest

from prom_local.backends.choose import RayChoice, ServerChoice, model_matches, open_backend
from prom_local.backends.remote import ServerInfo
from prom_local.errors import UsageError


def test_the_local_judge_is_made_only_when_nothing_else_is_asked_for():
    made = []
    assert open_backend(lambda: made.append("judge") or "judge") == "judge" and made == ["judge"]
    with pytest.raises(UsageError, match="--server or --ray"):
        open_backend(lambda: made.append("again"), server=ServerChoice("http://127.0.0.1:9"),
                     ray=RayChoice(spec=None))
    assert made == ["judge"]   # refused before any model was loaded


@pytest.mark.parametrize("spec, served, path, ok", [
    ("judge", "judge", None, True),
    ("prometheus-ko", "prometheus-ko.Q4_K_M", "/m/prometheus-ko.Q4_K_M.gguf", True),
    ("prometheus-ko:Q4_K_M", "x", "/m/prometheus-ko.Q4_K_M.gguf", True),
    ("/elsewhere/prometheus-ko.Q4_K_M.gguf", "x", "/m/prometheus-ko.Q4_K_M.gguf", True),
    ("prometheus-ko:Q8_0", "x", "/m/prometheus-ko.Q4_K_M.gguf", False),
    ("other", "judge", "/m/prometheus-ko.Q4_K_M.gguf", False),
])
def test_model_names_the_served_model_by_its_name_file_or_store_name(spec, served, path, ok):
    info = ServerInfo(url="http://h:1", model=served, parallel=1, n_ctx=None, backend=None, path=path, details={})
    assert model_matches(spec, info) is ok
