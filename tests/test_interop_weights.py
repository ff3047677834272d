"""Model weights: torch modules <-> ordered pytrees, .pt / safetensors files, flax nnx models."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxupdate.interop.weights import (
    load_pt,
    load_safetensors,
    load_weights_into_torch,
    nnx_links,
    nnx_to_torch,
    save_safetensors,
    torch_to_nnx,
    weights_from_torch,
    weights_to_torch,
)
from jaxupdate.param_groups import leaf_paths

try:
    import safetensors  # noqa: F401

    HAVE_SAFETENSORS = True
except ImportError:
    HAVE_SAFETENSORS = False
needs_safetensors = pytest.mark.skipif(
    not HAVE_SAFETENSORS, reason="the optional 'safetensors' package is not installed"
)


class TorchNet(torch.nn.Module):
    """Conv -> BatchNorm -> Linear -> LayerNorm -> Sequential head, plus an embedding."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(2, 3, (3, 2), padding=1)
        self.bn = torch.nn.BatchNorm2d(3)
        self.fc = torch.nn.Linear(3 * 4 * 6, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.head = torch.nn.Sequential(
            torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)
        )
        self.emb = torch.nn.Embedding(7, 4)
        with torch.no_grad():  # non-trivial batch statistics and affine parameters
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 2)
            self.bn.bias.uniform_(-1, 1)
            self.norm.weight.uniform_(0.5, 2)

    def forward(self, x, tokens):
        x = torch.relu(self.bn(self.conv(x)))
        x = self.norm(self.fc(x.flatten(1)) + self.emb(tokens))
        return self.head(x)


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        kw = dict(param_dtype=jnp.float64, dtype=jnp.float64, rngs=rngs)
        self.conv = nnx.Conv(2, 3, (3, 2), padding=((1, 1), (1, 1)), **kw)
        self.bn = nnx.BatchNorm(3, use_running_average=True, **kw)
        self.fc = nnx.Linear(3 * 4 * 6, 4, **kw)
        self.norm = nnx.LayerNorm(4, epsilon=1e-5, **kw)  # torch eps; flax defaults to 1e-6
        self.head = nnx.Sequential(nnx.Linear(4, 6, **kw), nnx.relu, nnx.Linear(6, 2, **kw))
        self.emb = nnx.Embed(7, 4, **kw)

    def __call__(self, x, tokens):  # x in NHWC
        x = nnx.relu(self.bn(self.conv(x)))
        # torch flattens (C, H, W): transpose before the reshape (weights cannot fix this)
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        x = self.norm(self.fc(x) + self.emb(tokens))
        return self.head(x)


def _inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 4, 5))  # NCHW; the conv makes it 3 x 4 x 6
    tokens = np.array([1, 5])
    return x, tokens


def test_weights_from_torch_keeps_order_and_names():
    net = TorchNet().double()
    w = weights_from_torch(net)
    names = [n for n, _ in net.named_parameters()]
    assert list(w) == names
    paths, leaves, _ = leaf_paths(w)
    assert paths == names  # jax's flatten order and key paths are torch's
    for leaf, (_, p) in zip(leaves, net.named_parameters()):
        np.testing.assert_array_equal(np.asarray(leaf), p.detach().numpy())
        assert leaf.dtype == jnp.float64
    # buffers, in state_dict() order
    wb = weights_from_torch(net, buffers=True)
    assert list(wb) == list(net.state_dict())
    assert "bn.running_mean" in wb and wb["bn.num_batches_tracked"].dtype == jnp.int64
    # nested, still in torch's order
    wn = weights_from_torch(net, nested=True)
    assert list(wn) == ["conv", "bn", "fc", "norm", "head", "emb"]
    assert list(wn["head"]) == ["0", "2"] and list(wn["head"]["0"]) == ["weight", "bias"]
    assert leaf_paths(wn)[0] == [n.replace(".", "/") for n in names]
    # dtype cast of floating arrays only
    w32 = weights_from_torch(net, buffers=True, dtype=jnp.float32)
    assert w32["fc.weight"].dtype == jnp.float32
    assert w32["bn.num_batches_tracked"].dtype == jnp.int64


def test_round_trip_into_torch():
    net = TorchNet().double()
    w = weights_from_torch(net, nested=True)
    w = jax.tree.map(lambda x: x * 2 + 1, w)
    other = TorchNet().double()
    result = load_weights_into_torch(other, w, strict=False)
    assert result.missing_keys == ["bn.running_mean", "bn.running_var"]
    for (n, p), x in zip(other.named_parameters(), jax.tree.leaves(w)):
        np.testing.assert_array_equal(p.detach().numpy(), np.asarray(x), err_msg=n)
    sd = weights_to_torch(weights_from_torch(net, buffers=True))
    assert list(sd) == list(net.state_dict())
    TorchNet().double().load_state_dict(sd)  # strict: every key, right shapes


def test_load_pt_and_checkpoint_key(tmp_path):
    net = TorchNet()
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    w = load_pt(path)
    assert list(w) == list(net.state_dict())
    np.testing.assert_array_equal(np.asarray(w["fc.weight"]), net.fc.weight.detach().numpy())
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": net.state_dict(), "epoch": 3}, ckpt)
    with pytest.raises(TypeError, match="pass key="):
        load_pt(ckpt)
    assert list(load_pt(ckpt, key="model", nested=True)) == ["conv", "bn", "fc", "norm",
                                                              "head", "emb"]


class _Payload:
    """Unpickling this would create a file: weights_only=True must refuse to run it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_pt_never_unpickles_objects(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.ones(2), "payload": _Payload(str(marker))}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_pt(path)
    assert not marker.exists()


@needs_safetensors
def test_safetensors_round_trip(tmp_path):
    from safetensors.torch import load_file, save_file

    net = TorchNet()
    names = [n for n, _ in net.named_parameters()]
    path = tmp_path / "w.safetensors"
    save_file({n: p.detach().contiguous() for n, p in net.named_parameters()}, str(path))
    w = load_safetensors(path, order=names)
    assert list(w) == names
    for n, p in net.named_parameters():
        np.testing.assert_array_equal(np.asarray(w[n]), p.detach().numpy())
    # written from JAX, read by torch's safetensors and loaded into the module
    out = tmp_path / "out.safetensors"
    save_safetensors(weights_from_torch(net, buffers=True, nested=True), out)
    TorchNet().load_state_dict(load_file(str(out)))
    with pytest.raises(KeyError, match="nope"):
        load_safetensors(path, order=["nope"])


def test_safetensors_missing_package_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("safetensors"):
            raise ImportError("no safetensors")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install safetensors"):
        load_safetensors(os.devnull)


def test_torch_to_nnx_same_outputs():
    """Linear's transposed kernel, Conv's (O, I, kh, kw) -> (kh, kw, I, O), BatchNorm's stats."""
    tnet = TorchNet().double().eval()
    model = NnxNet(nnx.Rngs(1))
    links = torch_to_nnx(model, tnet)
    assert {link.torch_name for link in links} == {
        n for n in tnet.state_dict() if not n.endswith("num_batches_tracked")
    }
    x, tokens = _inputs()
    want = tnet(torch.tensor(x), torch.tensor(tokens)).detach().numpy()
    got = np.asarray(model(jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(tokens)))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # from a .pt file / a state dict / a pytree: the same
    model2 = NnxNet(nnx.Rngs(2))
    torch_to_nnx(model2, weights_from_torch(tnet, buffers=True, nested=True))
    got2 = np.asarray(model2(jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(tokens)))
    np.testing.assert_array_equal(got2, got)


def test_nnx_to_torch_round_trip():
    model = NnxNet(nnx.Rngs(3))
    tnet = TorchNet().double().eval()
    sd = nnx_to_torch(model, order=tnet.state_dict().keys())
    assert list(sd) == [n for n in tnet.state_dict() if not n.endswith("num_batches_tracked")]
    result = tnet.load_state_dict(sd, strict=False)
    # BatchNorm fills its own missing num_batches_tracked
    assert not result.missing_keys and not result.unexpected_keys
    x, tokens = _inputs()
    want = np.asarray(model(jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(tokens)))
    got = tnet(torch.tensor(x), torch.tensor(tokens)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(
        sd["fc.weight"].numpy(), np.asarray(model.fc.kernel.get_value()).T
    )


def test_nnx_names_rename_and_errors():
    model = NnxNet(nnx.Rngs(0))
    names = {link.torch_name: link.nnx_path for link in nnx_links(model)}
    assert names["head.0.weight"] == "head/layers/0/kernel"
    assert names["conv.weight"] == "conv/kernel" and names["bn.running_var"] == "bn/var"
    tnet = TorchNet().double()
    sd = OrderedDict((("body." + k), v) for k, v in tnet.state_dict().items())
    with pytest.raises(KeyError, match="missing in the weights"):
        torch_to_nnx(model, sd)
    torch_to_nnx(model, sd, rename=lambda n: "body." + n)
    np.testing.assert_array_equal(
        np.asarray(model.fc.kernel.get_value()), tnet.fc.weight.detach().numpy().T
    )
    # a wrong shape says which tensor and both shapes
    bad = OrderedDict(tnet.state_dict())
    bad["fc.weight"] = torch.zeros(4, 7, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"'fc.weight' -> 'fc/kernel': shape \(7, 4\)"):
        torch_to_nnx(model, bad)
    # non-strict: a torch tensor the model does not have is ignored
    extra = OrderedDict(tnet.state_dict())
    extra["unused.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="unused.weight"):
        torch_to_nnx(model, extra)
    torch_to_nnx(model, extra, strict=False)


def test_torch_and_flax_are_imported_lazily():
    """Importing jaxupdate's interop (and param groups) pulls in neither torch nor flax."""
    import subprocess
    import sys

    code = (
        "import sys, jaxupdate.interop, jaxupdate.interop.weights, jaxupdate.param_groups; "
        "bad = [m for m in ('torch', 'flax') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ,
                                                                   "JAX_PLATFORMS": "cpu"})
