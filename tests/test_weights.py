"""Safe weight loading: safetensors and plain torch files load; anything else is refused
with a message that names the problem."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from pipeline.config import load_config
from pipeline.config.schema import ClipConfig
from pipeline.models.clip import FrozenOpenCLIP
from pipeline.models.global_encoder import GlobalEncoder
from pipeline.models.weights import WeightsError, load_into, read_state_dict


@pytest.fixture
def encoder() -> GlobalEncoder:
    return GlobalEncoder(48, 32, load_config("tiny").global_encoder)


def test_safetensors_and_torch_files_round_trip(tmp_path, encoder) -> None:
    state = encoder.state_dict()
    save_file(state, tmp_path / "enc.safetensors")
    torch.save({"state_dict": state, "step": 7}, tmp_path / "enc.pth")
    for name in ("enc.safetensors", "enc.pth"):
        fresh = GlobalEncoder(48, 32, load_config("tiny").global_encoder)
        load_into(fresh, read_state_dict(tmp_path / name))
        for k, v in fresh.state_dict().items():
            assert torch.equal(v, state[k])


def test_renamed_key_is_named(tmp_path, encoder) -> None:
    state = encoder.state_dict()
    state["layers.0.weight_renamed"] = state.pop("layers.0.weight")
    with pytest.raises(WeightsError, match=r"missing keys, first 'layers\.0\.weight'.*unexpected keys, first 'layers\.0\.weight_renamed'"):
        load_into(encoder, state)


def test_wrong_shape_is_named(encoder) -> None:
    state = encoder.state_dict()
    state["layers.0.bias"] = torch.zeros(3)
    with pytest.raises(WeightsError, match=r"wrong shape, first 'layers\.0\.bias': \(3,\) in the file, \(16,\) in the model"):
        load_into(encoder, state)


class _Payload:
    def __reduce__(self):
        return (print, ("this would have run",))


def test_pickle_payload_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"weight": _Payload()}, f)
    with pytest.raises(WeightsError, match="refused to load"):
        read_state_dict(path)


def test_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(WeightsError, match="no such weights file"):
        read_state_dict(tmp_path / "absent.safetensors")


def test_clip_loads_local_weights(tmp_path) -> None:
    source = FrozenOpenCLIP(ClipConfig(arch="tiny"))
    save_file(source.model.state_dict(), tmp_path / "clip.safetensors")
    loaded = FrozenOpenCLIP(ClipConfig(arch="tiny", weights=str(tmp_path / "clip.safetensors")))
    torch.testing.assert_close(loaded.encode_text(["a cat"]), source.encode_text(["a cat"]))
