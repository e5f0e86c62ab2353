"""Safe import of NVlabs EDM network pickles.

The test writes a pickle with EDM's structure (NVlabs/edm training_loop.py + torch_utils/persistence.py):
`pickle.dump(dict(ema=EDMPrecond, loss_fn=..., augment_pipe=..., dataset_kwargs=...))`, where each
persistence-wrapped module pickles as `torch_utils.persistence._reconstruct_persistent_obj(meta)` with
its class source in `meta['module_src']`, and `torch.nn.ModuleDict` containers pickle with NEWOBJ/BUILD.
The names and shapes follow EDM's SongUNet constructor; `edm_forward` below is EDM's forward pass,
written from training/networks.py, so the imported gcflow network can be checked output for output.
"""

import argparse
import math
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gcflow.commands import import_edm as cmd
from gcflow.teacher.edm_loss import Denoiser
from gcflow.teacher.edm_pickle import EDMPickleError, Opaque, PersistentObject, safe_load
from gcflow.teacher.import_edm import import_edm_bytes, load_teacher, read_edm_network

CFG = dict(
    img_resolution=8,
    in_channels=3,
    out_channels=3,
    model_channels=16,
    channel_mult=[1, 2],
    num_blocks=1,
    attn_resolutions=[4],
    channel_mult_emb=4,
    augment_dim=9,
)


# ---------------------------------------------------------------------------------------------
# A stand-in for EDM's torch_utils.persistence, registered only while a test writes its pickle.


def _fake_persistence(monkeypatch):
    """Register a module `torch_utils.persistence` whose loader execs the embedded source, as EDM's does."""
    pkg = types.ModuleType("torch_utils")
    mod = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        module = types.ModuleType("_imported_module")
        exec(meta["module_src"], module.__dict__)  # noqa: S102 (what EDM's _src_to_module does)
        obj = types.SimpleNamespace()
        obj.__dict__.update(meta["state"])
        return obj

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    pkg.persistence = mod
    monkeypatch.setitem(sys.modules, "torch_utils", pkg)
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", mod)
    return mod


class Node:
    """One of EDM's persistence-decorated modules in the pickle stream."""

    def __init__(self, class_name, params=None, buffers=None, modules=None, attrs=None, init_kwargs=None):
        self.class_name = class_name
        self.params, self.buffers = params or {}, buffers or {}
        self.modules, self.attrs, self.init_kwargs = modules or {}, attrs or {}, init_kwargs or {}

    def __reduce_ex__(self, protocol):
        state = {
            "training": False,
            "_parameters": OrderedDict(self.params),
            "_buffers": OrderedDict(self.buffers),
            "_non_persistent_buffers_set": set(),
            "_backward_hooks": OrderedDict(),
            "_forward_hooks": OrderedDict(),
            "_forward_pre_hooks": OrderedDict(),
            "_modules": OrderedDict(self.modules),
            **self.attrs,
        }
        state.update(_init_args=(), _init_kwargs=dict(self.init_kwargs))
        meta = dict(type="class", version=6, module_src=MODULE_SRC[0], class_name=self.class_name, state=state)
        return (sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (meta,))


class ExecPayload:
    """An object whose unpickling runs `code` (pickled as builtins.exec(code))."""

    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


MODULE_SRC = [""]  # set per test: the 'class source' a real EDM pickle would embed


def _edm_songunet(cfg, label_dim, gen):
    """EDM SongUNet's modules, names and shapes (training/networks.py, DDPM++ settings), random weights."""

    def rand(*shape):
        return torch.nn.Parameter(0.3 * torch.randn(*shape, generator=gen), requires_grad=False)

    filt = torch.full((1, 1, 2, 2), 0.25)  # EDM: f.ger(f)/f.sum()² for [1, 1]
    mc, emb = cfg["model_channels"], cfg["model_channels"] * cfg["channel_mult_emb"]

    def linear(i, o, bias=True):
        return Node("Linear", params={"weight": rand(o, i), "bias": rand(o) if bias else None})

    def conv(i, o, k, resample=False):
        return Node(
            "Conv2d",
            params={"weight": rand(o, i, k, k), "bias": rand(o)},
            buffers={"resample_filter": filt.clone() if resample else None},
        )

    def gn(c):
        return Node("GroupNorm", params={"weight": rand(c), "bias": rand(c)}, attrs={"eps": 1e-6})

    def block(i, o, resample=False, attn=False):
        mods = {
            "norm0": gn(i),
            "conv0": conv(i, o, 3, resample),
            "affine": linear(emb, o),
            "norm1": gn(o),
            "conv1": conv(o, o, 3),
        }
        if i != o or resample:
            mods["skip"] = conv(i, o, 1, resample)
        if attn:
            mods.update(norm2=gn(o), qkv=conv(o, 3 * o, 1), proj=conv(o, o, 1))
        return Node("UNetBlock", modules=mods, attrs={"skip_scale": np.sqrt(0.5), "num_heads": int(attn)})

    enc, dec, skips, cout = {}, {}, [], cfg["in_channels"]
    for level, mult in enumerate(cfg["channel_mult"]):
        res = cfg["img_resolution"] >> level
        if level == 0:
            enc[f"{res}x{res}_conv"], cout = conv(cout, mc, 3), mc
        else:
            enc[f"{res}x{res}_down"] = block(cout, cout, resample=True)
        skips.append(cout)
        for idx in range(cfg["num_blocks"]):
            enc[f"{res}x{res}_block{idx}"] = block(cout, mc * mult, attn=res in cfg["attn_resolutions"])
            cout = mc * mult
            skips.append(cout)
    for level, mult in reversed(list(enumerate(cfg["channel_mult"]))):
        res = cfg["img_resolution"] >> level
        if level == len(cfg["channel_mult"]) - 1:
            dec[f"{res}x{res}_in0"], dec[f"{res}x{res}_in1"] = block(cout, cout, attn=True), block(cout, cout)
        else:
            dec[f"{res}x{res}_up"] = block(cout, cout, resample=True)
        for idx in range(cfg["num_blocks"] + 1):
            attn = idx == cfg["num_blocks"] and res in cfg["attn_resolutions"]
            dec[f"{res}x{res}_block{idx}"] = block(cout + skips.pop(), mc * mult, attn=attn)
            cout = mc * mult
        if level == 0:
            dec[f"{res}x{res}_aux_norm"], dec[f"{res}x{res}_aux_conv"] = gn(cout), conv(cout, cfg["out_channels"], 3)
    mods = {
        "map_noise": Node("PositionalEmbedding", attrs={"num_channels": mc, "endpoint": True}),
        "map_label": linear(label_dim, mc) if label_dim else None,
        "map_augment": linear(cfg["augment_dim"], mc, bias=False),
        "map_layer0": linear(mc, emb),
        "map_layer1": linear(emb, emb),
        "enc": _module_dict(enc),
        "dec": _module_dict(dec),
    }
    mods = {k: v for k, v in mods.items() if v is not None}
    kwargs = dict(
        cfg,
        label_dim=label_dim,
        embedding_type="positional",
        encoder_type="standard",
        decoder_type="standard",
        channel_mult_noise=1,
        resample_filter=[1, 1],
        dropout=0.13,
    )
    return Node("SongUNet", modules=mods, init_kwargs=kwargs)


def _module_dict(children):
    """A real torch.nn.ModuleDict holding stand-in children: pickles with NEWOBJ + BUILD as in EDM's files."""
    md = torch.nn.ModuleDict().eval()
    md.__dict__["_modules"] = OrderedDict(children)
    return md


def _tensors(node, prefix=""):
    if isinstance(node, torch.nn.ModuleDict):
        node = Node("ModuleDict", modules=node.__dict__["_modules"])
    out = {prefix + k: v.data for k, v in {**node.params, **node.buffers}.items() if v is not None}
    for name, child in node.modules.items():
        out.update(_tensors(child, f"{prefix}{name}."))
    return out


def _snapshot(monkeypatch, marker_dir: Path, label_dim=0, seed=0, precond_class="EDMPrecond"):
    """(pickle bytes, EDM tensors under model.) for an EDM-like snapshot whose code would write markers."""
    _fake_persistence(monkeypatch)
    MODULE_SRC[0] = f"open({str(marker_dir / 'persistence-source-ran')!r}, 'w').write('x')\nclass SongUNet: pass\n"
    model = _edm_songunet(CFG, label_dim, torch.Generator().manual_seed(seed))
    precond = Node(
        precond_class,
        modules={"model": model},
        attrs={"sigma_data": 0.5},
        init_kwargs={
            "img_resolution": 8,
            "img_channels": 3,
            "label_dim": label_dim,
            "sigma_data": 0.5,
            "sigma_max": float("inf"),
            "model_type": "SongUNet",
            **({"sigma_min": 0.003} if precond_class == "ECMPrecond" else {}),
        },
    )
    loss = Node("EDMLoss", attrs={"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5})
    data = {
        "ema": precond,
        "loss_fn": loss,
        "augment_pipe": ExecPayload(f"open({str(marker_dir / 'exec-ran')!r}, 'w').write('x')"),
        "dataset_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "path": "cifar10.zip"},
    }
    return pickle.dumps(data), _tensors(model)


# ---------------------------------------------------------------------------------------------
# EDM's forward pass (training/networks.py), on the raw EDM tensors.


def _conv(t, name, x, up=False, down=False):
    w, b, f = t.get(name + ".weight"), t.get(name + ".bias"), t.get(name + ".resample_filter")
    c = x.shape[1]
    if up:
        x = F.conv_transpose2d(x, f.mul(4).tile([c, 1, 1, 1]), groups=c, stride=2, padding=(f.shape[-1] - 1) // 2)
    if down:
        x = F.conv2d(x, f.tile([c, 1, 1, 1]), groups=c, stride=2, padding=(f.shape[-1] - 1) // 2)
    x = F.conv2d(x, w, padding=w.shape[-1] // 2)
    return x + b.reshape(1, -1, 1, 1)


def _gn(t, name, x):
    return F.group_norm(x, min(32, x.shape[1] // 4), t[name + ".weight"], t[name + ".bias"], eps=1e-6)


def _linear(t, name, x):
    return x @ t[name + ".weight"].t() + t[name + ".bias"]


def _block(t, p, x, emb):
    up, down = p.endswith("_up"), p.endswith("_down")
    orig = x
    x = _conv(t, p + ".conv0", F.silu(_gn(t, p + ".norm0", x)), up, down)
    x = F.silu(_gn(t, p + ".norm1", x + _linear(t, p + ".affine", emb)[:, :, None, None]))
    x = _conv(t, p + ".conv1", x)
    x = (x + (_conv(t, p + ".skip", orig, up, down) if p + ".skip.weight" in t else orig)) * math.sqrt(0.5)
    if p + ".qkv.weight" in t:
        q, k, v = _conv(t, p + ".qkv", _gn(t, p + ".norm2", x)).reshape(x.shape[0], x.shape[1], 3, -1).unbind(2)
        w = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(k.shape[1])).softmax(dim=2)
        a = torch.einsum("nqk,nck->ncq", w, v)
        x = (_conv(t, p + ".proj", a.reshape(*x.shape)) + x) * math.sqrt(0.5)
    return x


def edm_forward(t, x, noise_labels, onehot=None):
    """EDM SongUNet.forward (DDPM++, no augmentation labels) on EDM-named tensors `t`."""
    half = t["map_layer0.weight"].shape[1] // 2
    freqs = (1 / 10000) ** (torch.arange(half, dtype=x.dtype) / (half - 1))
    emb = noise_labels.ger(freqs)
    emb = torch.cat([emb.cos(), emb.sin()], dim=1)
    emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # swap sin/cos
    if onehot is not None:
        emb = emb + _linear(t, "map_label", onehot * math.sqrt(onehot.shape[1]))
    emb = F.silu(_linear(t, "map_layer1", F.silu(_linear(t, "map_layer0", emb))))
    names = list(dict.fromkeys(".".join(k.split(".")[:2]) for k in t if k.startswith(("enc.", "dec."))))
    skips = []
    for p in [n for n in names if n.startswith("enc.")]:
        x = _conv(t, p, x) if p.endswith("_conv") else _block(t, p, x, emb)
        skips.append(x)
    for p in [n for n in names if n.startswith("dec.") and "aux" not in n]:
        if x.shape[1] != t[p + ".norm0.weight"].numel():
            x = torch.cat([x, skips.pop()], dim=1)
        x = _block(t, p, x, emb)
    aux = next(n for n in names if "aux_norm" in n)
    return _conv(t, aux.replace("norm", "conv"), F.silu(_gn(t, aux, x)))


# ---------------------------------------------------------------------------------------------


def test_control_plain_pickle_would_execute_the_payloads(monkeypatch, tmp_path):
    """The payloads are live: an ordinary pickle.load of the same kind of file runs both."""
    data, _ = _snapshot(monkeypatch, tmp_path)
    pickle.loads(data)
    assert (tmp_path / "persistence-source-ran").exists() and (tmp_path / "exec-ran").exists()


@pytest.mark.parametrize("label_dim", [0, 3])
def test_import_reproduces_edm_weights_and_outputs_without_executing(monkeypatch, tmp_path, label_dim):
    data, edm = _snapshot(monkeypatch, tmp_path, label_dim)
    tensors, meta = import_edm_bytes(data, "snap.pkl")
    assert not list(tmp_path.iterdir()), "nothing from the file may run"
    assert meta["network"]["noise_label_scale"] == 1.0 and meta["network"]["num_classes"] == label_dim
    assert meta["precond"] == {
        "kind": "edm",
        "class": "EDMPrecond",
        "sigma_data": 0.5,
        "sigma_min": 0.0,
        "sigma_max": None,
    }
    # Same weights: renamed layers explicitly, the rest by identical names; nothing but map_augment lost.
    assert torch.equal(tensors["enc_in.weight"], edm["enc.8x8_conv.weight"])
    assert torch.equal(tensors["out_conv.bias"], edm["dec.8x8_aux_conv.bias"])
    assert torch.equal(tensors["out_norm.weight"], edm["dec.8x8_aux_norm.weight"])
    for name, t in tensors.items():
        if name in edm and "qkv" not in name and name != "map_label.weight":
            assert torch.equal(t, edm[name]), name
    if label_dim:
        assert torch.equal(tensors["map_label.weight"], edm["map_label.weight"].t())
    n_edm = sum(t.numel() for k, t in edm.items() if "resample_filter" not in k and "map_augment" not in k)
    assert sum(t.numel() for t in tensors.values()) == n_edm
    # Same function: gcflow's SongUNet vs EDM's forward pass, in float64.
    from gcflow.teacher.import_edm import build_teacher

    net = build_teacher(meta["network"], tensors).double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    c_noise = torch.log(torch.tensor([0.3, 20.0], dtype=torch.float64)) / 4
    labels = torch.tensor([2, 0]) if label_dim else None
    onehot = F.one_hot(labels, label_dim).double() if label_dim else None
    ref = edm_forward({k: v.double() for k, v in edm.items()}, x, c_noise, onehot)
    assert torch.allclose(net(x, c_noise, labels), ref, rtol=1e-9, atol=1e-9)


def test_cli_writes_teacher_refuses_overwrite_and_loads(monkeypatch, tmp_path, capsys):
    markers = tmp_path / "markers"
    markers.mkdir()
    data, edm = _snapshot(monkeypatch, markers)
    src = tmp_path / "edm.pkl"
    src.write_bytes(data)
    out = tmp_path / "teacher.safetensors"
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    assert cmd.run(parser.parse_args([str(src), "--out", str(out)])) == 0
    assert out.exists() and out.with_suffix(".json").exists()
    assert cmd.run(parser.parse_args([str(src), "--out", str(out)])) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert cmd.run(parser.parse_args([str(src), "--out", str(out), "--overwrite"])) == 0
    assert not list(markers.iterdir())
    teacher = load_teacher(out)
    assert isinstance(teacher, Denoiser) and not teacher.training
    assert torch.equal(teacher.net.state_dict()["dec.4x4_in0.proj.weight"], edm["dec.4x4_in0.proj.weight"])


@pytest.mark.parametrize("content", [pickle.dumps({"a": 1}), b"not a pickle at all", pickle.dumps([1, 2])])
def test_cli_one_line_error_for_non_edm_files(tmp_path, capsys, content):
    src = tmp_path / "x.pkl"
    src.write_bytes(content)
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    assert cmd.run(parser.parse_args([str(src), "--out", str(tmp_path / "t.safetensors")])) == 2
    err = capsys.readouterr().err
    assert err.startswith("gcflow: error:") and err.count("\n") == 1
    assert not (tmp_path / "t.safetensors").exists()


def test_hostile_reduce_payloads_stay_inert(tmp_path):
    import os

    marker = tmp_path / "m"
    payloads = [ExecPayload(f"open({str(marker)!r}, 'w')"), _System(f"touch {marker}")]
    for p in payloads:
        obj = safe_load(pickle.dumps(p))
        assert isinstance(obj, Opaque)
    assert not marker.exists() and os.path.isdir(tmp_path)


class _System:
    def __init__(self, cmdline):
        self.cmdline = cmdline

    def __reduce__(self):
        import os

        return (os.system, (self.cmdline,))


def test_read_network_rejects_other_denoisers(monkeypatch, tmp_path):
    data, _ = _snapshot(monkeypatch, tmp_path)
    net = read_edm_network(data)
    assert net.precond == "EDMPrecond" and net.model_kwargs["augment_dim"] == 9
    assert isinstance(safe_load(data)["loss_fn"], PersistentObject)
    _fake_persistence(monkeypatch)
    bad = pickle.dumps({"ema": Node("VPPrecond", modules={"model": Node("SongUNet")})})
    with pytest.raises(EDMPickleError, match="only EDMPrecond"):
        read_edm_network(bad)


def test_ect_network_loads_as_consistency_model(monkeypatch, tmp_path):
    """ECT's ECMPrecond evaluates as f(x, σ) with σ_min = 0.003: it comes back as a ConsistencyModel."""
    from gcflow.precond import ConsistencyModel
    from gcflow.teacher.import_edm import write_teacher

    data, _ = _snapshot(monkeypatch, tmp_path, precond_class="ECMPrecond")
    tensors, meta = import_edm_bytes(data)
    assert meta["precond"]["kind"] == "consistency" and meta["precond"]["sigma_min"] == 0.003
    out = tmp_path / "ect.safetensors"
    write_teacher(out, tensors, meta)
    model = load_teacher(out)
    assert isinstance(model, ConsistencyModel) and model.sigma_min == 0.003
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(model(x, torch.full((2,), 0.003)), x)  # boundary condition
