"""The EDM DDPM++ U-Net (gcflow.networks.songunet): shapes, maths of its parts, determinism, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gcflow.dropout import SharedDropout
from gcflow.networks import SongUNet, count_parameters
from gcflow.networks.songunet import (
    FourierEmbedding,
    PositionalEmbedding,
    UNetBlock,
    downsample,
    upsample,
)

TINY = 16  # model_channels for the fast tests

# The paper's architectures (method spec §10) at tiny width; `shape` is (C, R).
PAPER_CONFIGS = {
    "cifar10": dict(img_resolution=32, channel_mult=(1, 2, 2), num_blocks=3, attn_resolutions=(16,)),
    "imagenet32": dict(
        img_resolution=32, channel_mult=(1, 1, 2), num_blocks=(3, 5, 7), attn_resolutions=(16,), dropout=(0, 0.2, 0.2)
    ),
    "celeba64": dict(img_resolution=64, channel_mult=(1, 2, 2, 2), num_blocks=(3, 3, 4, 5), dropout=(0, 0, 0.2, 0.2)),
    "lsun_church64": dict(
        img_resolution=64, channel_mult=(1, 2, 2, 2), num_blocks=(3, 3, 4, 5), dropout=(0, 0, 0.2, 0.2)
    ),
}
SMALL_CONFIGS = {
    "digits8_1block": dict(img_resolution=8, in_channels=1, out_channels=1, channel_mult=(1, 2), num_blocks=1),
    "digits8_2blocks": dict(
        img_resolution=8, in_channels=1, out_channels=1, channel_mult=(1, 2), num_blocks=(1, 2), attn_resolutions=(4,)
    ),
    "mnist28": dict(
        img_resolution=28, in_channels=1, out_channels=1, channel_mult=(1, 2, 2), num_blocks=2, attn_resolutions=(14,)
    ),
}


def make(seed: int = 0, **kwargs) -> SongUNet:
    kwargs.setdefault("in_channels", 3)
    kwargs.setdefault("out_channels", kwargs["in_channels"])
    kwargs.setdefault("model_channels", TINY)
    torch.manual_seed(seed)
    return SongUNet(**kwargs)


def inputs(net: SongUNet, batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = net.img_resolution
    x = torch.randn(batch, net.in_channels, r, r, generator=g)
    sigma = torch.exp(torch.randn(batch, generator=g) * 1.2 - 1.1)
    return x, torch.log(sigma) / 4  # c_noise, as gcflow.precond.ConsistencyModel passes it


def randomize(net: torch.nn.Module, seed: int = 3, std: float = 0.2) -> None:
    """Overwrite every weight so the near-zero EDM inits do not hide any path (norm gains around 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            offset = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(torch.randn(p.shape, generator=g) * std + offset)


# ---------------------------------------------------------------------------------------
# Shapes for the paper's settings.


@pytest.mark.parametrize("name", list(PAPER_CONFIGS) + list(SMALL_CONFIGS))
def test_output_shape(name: str) -> None:
    cfg = {**PAPER_CONFIGS, **SMALL_CONFIGS}[name]
    net = make(**cfg).eval()
    x, c = inputs(net)
    with torch.no_grad():
        y = net(x, c)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()


def test_block_structure_matches_ddpmpp() -> None:
    """Per-level block counts, skip widths and attention placement as in EDM's SongUNet."""
    net = make(**PAPER_CONFIGS["imagenet32"])
    enc_blocks = [n for n in net.enc if "_block" in n]
    dec_blocks = [n for n in net.dec if "_block" in n]
    assert len(enc_blocks) == 3 + 5 + 7 and len(dec_blocks) == 4 + 6 + 8
    assert list(net.dec)[:2] == ["8x8_in0", "8x8_in1"] and "16x16_up" in net.dec and "16x16_down" in net.enc
    attn = sorted(n for n, m in net.named_modules() if isinstance(m, UNetBlock) and m.num_heads)
    # 16x16: every encoder block, the last decoder block; 8x8: the first bottleneck block only.
    assert attn == sorted([f"enc.16x16_block{i}" for i in range(5)] + ["dec.16x16_block5", "dec.8x8_in0"])
    # Per-level dropout applies to that level's blocks, its down/up block and the bottleneck.
    assert net.enc["32x32_block0"].dropout == 0.0 and net.enc["16x16_down"].dropout == 0.2
    assert net.dec["8x8_in0"].dropout == 0.2 and net.dec["32x32_block3"].dropout == 0.0


# ---------------------------------------------------------------------------------------
# Golden parameter counts (full width, constructed on CPU).


def test_parameter_count_cifar10_golden() -> None:
    net = SongUNet(32, 3, 3, model_channels=128, channel_mult=(1, 2, 2), num_blocks=3, attn_resolutions=(16,))
    assert count_parameters(net) == 35_766_531


def test_parameter_count_matches_edm_ddpmpp_cifar10() -> None:
    """EDM's own CIFAR-10 DDPM++ (mult [2,2,2], 4 blocks) is reported as 55.73M parameters.

    EDM adds a bias-free 9×128 augmentation-label layer that this network does not have.
    """
    net = SongUNet(32, 3, 3, model_channels=128, channel_mult=(2, 2, 2), num_blocks=4, attn_resolutions=(16,))
    assert count_parameters(net) == 55_732_739
    assert round((count_parameters(net) + 9 * 128) / 1e6, 2) == 55.73


def test_fourier_embedding_adds_exactly_one_wider_input_layer() -> None:
    pos = make(embedding_type="positional", **PAPER_CONFIGS["cifar10"])
    fou = make(embedding_type="fourier", **PAPER_CONFIGS["cifar10"])
    # Fourier doubles the noise features (TINY -> 2·TINY) feeding the (4·TINY)-wide first map layer.
    assert count_parameters(fou) - count_parameters(pos) == TINY * 4 * TINY
    assert "map_noise.freqs" in fou.state_dict()  # random frequencies are saved with the weights


# ---------------------------------------------------------------------------------------
# The parts, against their formulas.


def test_resampling_is_the_edm_11_filter() -> None:
    """Down = conv with the normalised [1,1]⊗[1,1] filter, stride 2; up = its transpose with gain 4."""
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    f = torch.full((3, 1, 2, 2), 0.25, dtype=torch.float64)
    torch.testing.assert_close(downsample(x), F.conv2d(x, f, stride=2, groups=3), rtol=0, atol=1e-14)
    torch.testing.assert_close(upsample(x), F.conv_transpose2d(x, 4 * f, stride=2, groups=3), rtol=0, atol=1e-14)


def test_positional_embedding_formula() -> None:
    emb = PositionalEmbedding(8)
    labels = torch.tensor([0.0, 1.0, -250.0], dtype=torch.float64)
    out = emb(labels)
    freqs = 10000.0 ** -(torch.arange(4, dtype=torch.float64) / 3)  # endpoint: last frequency is 1e-4
    expected = torch.cat([torch.sin(labels[:, None] * freqs), torch.cos(labels[:, None] * freqs)], dim=1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_fourier_embedding_formula() -> None:
    torch.manual_seed(0)
    emb = FourierEmbedding(6, scale=0.5)
    labels = torch.tensor([0.3, -2.0], dtype=torch.float64)
    arg = labels[:, None] * 2 * math.pi * emb.freqs.double()[None, :]
    torch.testing.assert_close(emb(labels), torch.cat([arg.sin(), arg.cos()], dim=1))


def test_noise_label_scale_multiplies_c_noise() -> None:
    """F with scale s at c_noise equals F with scale 1 at s·c_noise (same weights)."""
    scaled = make(noise_label_scale=1000.0, **SMALL_CONFIGS["mnist28"]).eval()
    plain = make(noise_label_scale=1.0, **SMALL_CONFIGS["mnist28"]).eval()
    plain.load_state_dict(scaled.state_dict())
    x, c = inputs(scaled)
    with torch.no_grad():
        torch.testing.assert_close(scaled(x, c), plain(x, 1000.0 * c), rtol=0, atol=0)


@pytest.mark.parametrize("channels_per_head", [None, 4])
def test_attention_matches_softmax_formula(channels_per_head: int | None) -> None:
    torch.manual_seed(0)
    heads = 1 if channels_per_head is None else 8 // channels_per_head
    block = UNetBlock(8, 8, 4, attention=True, num_heads=heads).double()
    randomize(block)
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    qkv = block.qkv(x).reshape(2, 3, heads, 8 // heads, 16)  # channels ordered (3, heads, head_dim)
    q, k, v = qkv.unbind(1)
    w = torch.softmax(torch.einsum("bhdq,bhdk->bhqk", q, k) / math.sqrt(8 // heads), dim=-1)
    expected = torch.einsum("bhqk,bhdk->bhdq", w, v).reshape(2, 8, 4, 4)
    torch.testing.assert_close(block._attention(x), expected, rtol=0, atol=1e-12)


def test_edm_initialisation() -> None:
    """Xavier-uniform weights, zero biases, sqrt(0.2) qkv, 1e-5 on the layers closing a residual branch."""
    net = make(**PAPER_CONFIGS["cifar10"])

    def bound(w: torch.Tensor) -> float:
        receptive = w[0, 0].numel() if w.ndim == 4 else 1
        return math.sqrt(6.0 / ((w.shape[0] + w.shape[1]) * receptive))

    for name, p in net.named_parameters():
        if name.endswith("bias"):
            assert torch.all(p == 0), name
        elif "norm" in name:
            assert torch.all(p == 1), name
        else:
            closing = name.endswith(("conv1.weight", "proj.weight")) or name == "out_conv.weight"
            scale = 1e-5 if closing else math.sqrt(0.2) if name.endswith("qkv.weight") else 1.0
            limit = scale * bound(p) if name != "map_label.weight" else bound(p.T)
            assert p.abs().max() <= limit * (1 + 1e-6), name
            assert p.abs().max() > 0.9 * limit, name  # actually uses the full uniform range
    # Each block starts close to the identity, so the untrained output is tiny.
    x, c = inputs(net)
    with torch.no_grad():
        assert net(x, c).abs().max() < 1e-3


def test_gradients_reach_every_parameter() -> None:
    net = make(num_classes=5, **PAPER_CONFIGS["imagenet32"]).train()
    x, c = inputs(net)
    net(x, c, torch.tensor([0, 4])).square().sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


# ---------------------------------------------------------------------------------------
# Determinism and randomness.


def test_same_seed_same_weights_and_outputs() -> None:
    a, b = make(seed=7, **PAPER_CONFIGS["cifar10"]), make(seed=7, **PAPER_CONFIGS["cifar10"])
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb), na
    c = make(seed=8, **PAPER_CONFIGS["cifar10"])
    assert not torch.equal(a.enc_in.weight, c.enc_in.weight)
    x, cn = inputs(a)
    a.eval(), b.eval()
    with torch.no_grad():
        ya = a(x, cn)
        assert torch.equal(ya, b(x, cn))
        assert torch.equal(ya, a(x, cn))  # eval mode: no randomness at all


def test_dropout_replays_with_the_same_rng_state() -> None:
    net = make(dropout=0.3, **SMALL_CONFIGS["mnist28"]).train()
    randomize(net)  # make the dropout branches matter at full strength
    x, c = inputs(net)
    with torch.no_grad():
        torch.manual_seed(11)
        y1 = net(x, c)
        torch.manual_seed(11)
        y2 = net(x, c)
        torch.manual_seed(12)
        y3 = net(x, c)
        shared = SharedDropout(seed=5, device="cpu")
        with shared.replay():
            y4 = net(x, c)
        with shared.replay():
            y5 = net(x, c)
        net.eval()
        y_eval = net(x, c)
    assert torch.equal(y1, y2) and torch.equal(y4, y5)
    assert not torch.allclose(y1, y3) and not torch.allclose(y1, y_eval)


# ---------------------------------------------------------------------------------------
# Class conditioning.


def test_class_conditioning_changes_the_output() -> None:
    net = make(num_classes=10, **PAPER_CONFIGS["cifar10"]).eval()
    # At EDM's init each residual branch is closed by a 1e-5 conv, so conditioning starts ~1e-10 weak.
    randomize(net)
    x, c = inputs(net)
    with torch.no_grad():
        y0 = net(x, c, torch.tensor([0, 0]))
        y1 = net(x, c, torch.tensor([3, 0]))
    assert (y0[0] - y1[0]).abs().max() > 1e-2 * y0[0].abs().max()
    torch.testing.assert_close(y0[1], y1[1], rtol=0, atol=0)  # per-sample: other rows untouched


def test_label_dropout_keeps_only_the_bias() -> None:
    net = make(num_classes=4, label_dropout=0.5, **SMALL_CONFIGS["digits8_1block"])
    randomize(net)
    labels = torch.full((64,), 2)
    torch.manual_seed(0)
    rows = net.train().map_label(labels)
    kept = net.eval().map_label(labels)
    null = net.map_label.bias.expand_as(kept)
    is_kept = torch.isclose(rows, kept).all(dim=1)
    is_null = torch.isclose(rows, null).all(dim=1)
    assert torch.all(is_kept ^ is_null) and 10 < int(is_null.sum()) < 54


def test_unconditional_network_ignores_labels() -> None:
    net = make(**SMALL_CONFIGS["digits8_1block"]).eval()
    x, c = inputs(net)
    with torch.no_grad():
        assert torch.equal(net(x, c), net(x, c, torch.tensor([1, 2])))


# ---------------------------------------------------------------------------------------
# Embedding types, memory format, autocast.


@pytest.mark.parametrize("embedding_type", ["positional", "fourier"])
def test_embedding_types_work(embedding_type: str) -> None:
    net = make(embedding_type=embedding_type, **PAPER_CONFIGS["cifar10"]).eval()
    randomize(net)
    x, c = inputs(net)
    with torch.no_grad():
        y = net(x, c)
        y_other_sigma = net(x, c + 0.5)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert not torch.allclose(y, y_other_sigma)  # the noise label reaches the output


def test_channels_last_matches_contiguous() -> None:
    net = make(channels_per_head=8, **PAPER_CONFIGS["cifar10"]).eval()
    randomize(net, std=0.1)
    x, c = inputs(net, batch=3)
    with torch.no_grad():
        y = net(x, c)
        net_cl = net.to(memory_format=torch.channels_last)
        formats: list[bool] = []
        hooks = [
            m.register_forward_hook(lambda m, i, o: formats.append(o.is_contiguous(memory_format=torch.channels_last)))
            for m in net_cl.modules()
            if isinstance(m, UNetBlock)
        ]
        y_cl = net_cl(x.contiguous(memory_format=torch.channels_last), c)
        for h in hooks:
            h.remove()
    assert (y_cl - y).abs().max() <= 1e-5 * max(1.0, y.abs().max().item())
    assert all(formats) and y_cl.is_contiguous(memory_format=torch.channels_last)  # no layout round trips


def test_bf16_autocast_runs_and_stays_close() -> None:
    net = make(**SMALL_CONFIGS["mnist28"]).eval()
    randomize(net, std=0.05)
    x, c = inputs(net)
    with torch.no_grad():
        y = net(x, c)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_bf16 = net(x, c)
    assert y_bf16.dtype == torch.bfloat16
    assert (y_bf16.float() - y).abs().max() < 0.05 * y.abs().max()


def test_float64_network() -> None:
    """The whole network, embeddings and GroupNorm included, can run in float64 (for identity tests)."""
    net = make(**SMALL_CONFIGS["digits8_1block"]).double().eval()
    x, c = inputs(net)
    with torch.no_grad():
        assert net(x.double(), c.double()).dtype == torch.float64


# ---------------------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(channel_mult=(1, 2, 2), num_blocks=(3, 3)), "num_blocks has 2 entries but channel_mult has 3"),
        (dict(channel_mult=(1, 2, 2), dropout=(0.0, 0.1, 0.1, 0.1)), "dropout has 4 entries"),
        (dict(num_blocks=(3, 3.5, 3)), "num_blocks entries must be ints"),
        (dict(num_blocks="3"), "num_blocks must be a number or a sequence"),
        (dict(dropout=1.0), r"dropout must lie in \[0, 1\)"),
        (dict(num_blocks=-1), "num_blocks must be >= 0"),
        (dict(embedding_type="learned"), "embedding_type must be one of"),
        (dict(channel_mult=()), "channel_mult must be a non-empty"),
        (dict(model_channels=130, channel_mult=(1,)), "divisible into min"),
        (dict(label_dropout=1.0, num_classes=3), "label_dropout"),
    ],
)
def test_invalid_configuration_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make(**{"img_resolution": 32, **kwargs})


def test_resolution_not_divisible_raises() -> None:
    make(img_resolution=28, channel_mult=(1, 2, 2), attn_resolutions=())  # 28, 14, 7: fine
    with pytest.raises(ValueError, match="28 is not divisible by 2\\^3"):
        make(img_resolution=28, channel_mult=(1, 2, 2, 2))  # 7 -> 3.5


def test_bad_inputs_raise() -> None:
    net = make(num_classes=3, **SMALL_CONFIGS["digits8_1block"])
    x, c = inputs(net)
    with pytest.raises(ValueError, match="expected x of shape"):
        net(x[:, :, :4], c, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="noise_labels must have shape"):
        net(x, c[:, None], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="pass class_labels"):
        net(x, c)
    with pytest.raises(ValueError, match="integer class indices"):
        net(x, c, F.one_hot(torch.tensor([0, 1]), 3).float())


def test_traces_as_one_graph() -> None:
    """torch.compile(fullgraph=True) succeeds: no graph breaks, no host reads of device values."""
    net = make(num_classes=3, label_dropout=0.2, dropout=0.1, **SMALL_CONFIGS["digits8_1block"]).train()
    x, c = inputs(net)
    labels = torch.tensor([0, 2])
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    torch.manual_seed(4)
    y_compiled = compiled(x, c, labels)
    torch.manual_seed(4)
    y_eager = net(x, c, labels)
    torch.testing.assert_close(y_compiled, y_eager, rtol=0, atol=0)
