import pytest

from prom_local.errors import ModelNotFound
from prom_local.store.models import resolve_model


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF")
    return path


def test_name_and_quant_resolution(tmp_path):
    _touch(tmp_path / "mine" / "mine.F16.gguf")
    q8 = _touch(tmp_path / "mine" / "mine.Q8_0.gguf")
    q4 = _touch(tmp_path / "mine" / "mine.Q4_K_M.gguf")
    assert resolve_model("mine:Q8_0", tmp_path).path == q8
    # No quant named: never the 16-bit intermediate when a quantized file is there.
    assert resolve_model("mine", tmp_path).path in (q8, q4)
    assert resolve_model("mine", tmp_path).path.name != "mine.F16.gguf"
    # The registry's default quant wins for known models.
    known = _touch(tmp_path / "prometheus-ko" / "prometheus-ko.Q4_K_M.gguf")
    _touch(tmp_path / "prometheus-ko" / "prometheus-ko.Q8_0.gguf")
    resolved = resolve_model("prometheus-ko", tmp_path)
    assert resolved.path == known and resolved.profile == "prometheus-ko" and resolved.quant == "Q4_K_M"


def test_paths_and_unknown_names(tmp_path):
    gguf = _touch(tmp_path / "x.gguf")
    assert resolve_model(str(gguf), tmp_path).path == gguf.resolve()
    with pytest.raises(ModelNotFound, match="no model or file named 'nothing'"):
        resolve_model("nothing", tmp_path)
    with pytest.raises(ModelNotFound, match="pull prometheus-ko:Q5_K_M"):
        resolve_model("prometheus-ko:Q5_K_M", tmp_path)


def test_the_checkout_registry_is_the_shipped_one():
    # models/registry.json marks a checkout's model store and documents it; the package ships its
    # own copy (prom_local/data). An entry added to one and not the other would make `pull` in a
    # checkout and in an installed wheel disagree.
    from importlib import resources
    from pathlib import Path

    shipped = resources.files("prom_local.data").joinpath("registry.json").read_text("utf-8")
    checkout = (Path(__file__).resolve().parents[1] / "models" / "registry.json").read_text("utf-8")
    assert checkout == shipped
