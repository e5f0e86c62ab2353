"""The EDM "DDPM++" U-Net (SongUNet of Karras et al. 2022), the image network F_θ of method spec §2.

Architecture (EDM `SongUNet` with the DDPM++ settings, written from its published description):

* noise label -> sinusoidal (positional, `model_channels` features) or random Fourier
  (`2·model_channels` features) embedding, plus an optional class embedding, then two
  Linear+SiLU layers to an embedding of `channel_mult_emb·model_channels` features;
* encoder: a 3×3 input conv, then per level a downsampling block (levels > 0) followed by
  `num_blocks[level]` residual blocks; every output is kept as a skip connection;
* decoder: two bottleneck blocks at the lowest resolution (the first with attention), then
  per level an upsampling block (levels < last) and `num_blocks[level] + 1` blocks that each
  concatenate one skip; GroupNorm -> SiLU -> 3×3 conv to the output channels;
* residual block: GroupNorm -> SiLU -> (resample) -> 3×3 conv -> + Linear(emb) -> GroupNorm ->
  SiLU -> dropout -> 3×3 conv, plus a (resampled, 1×1-projected where shapes differ) skip,
  scaled by sqrt(1/2); attention blocks add GroupNorm -> 1×1 qkv -> softmax attention ->
  1×1 proj, again scaled by sqrt(1/2);
* resampling with the [1,1] filter: 2×2 average pooling down, nearest-neighbour up;
* initialisation: Xavier-uniform everywhere, zero biases, the qkv convs scaled by sqrt(0.2),
  and the layers that close a residual branch (second conv of each block, attention output
  projection, output conv) scaled by 1e-5 so each block starts as (almost) the identity.

Per-level `num_blocks` and `dropout` (a list with one entry per level) follow the paper's
released ImageNet and CelebA configurations; a level's dropout also applies to its down/up
sampling block and, at the lowest level, to the two bottleneck blocks.

Performance notes: attention goes through `F.scaled_dot_product_attention` with q/k/v laid out
so that a channels_last activation gives head-dim-contiguous views (no copies before the
kernel); GroupNorm runs in float32 and returns the input dtype (bf16 under autocast); nothing
in `forward` reads a device value on the host.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SongUNet", "count_parameters"]

# Every residual add is rescaled by this, so activations keep unit scale through ~40 blocks.
SKIP_SCALE = math.sqrt(0.5)
# iCT's Fourier scale for labels of size 1000·¼·log σ (EDM's NCSN++ used 16 on ln(σ/2)).
ICT_FOURIER_SCALE = 0.02
EMBEDDING_TYPES = ("positional", "fourier")


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of `module` (trainable or not, buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------
# Initialisation and small layers.


def _init_xavier(layer: nn.Conv2d | nn.Linear, scale: float = 1.0) -> None:
    """EDM's weight_init('xavier_uniform') times `scale`, zero bias (fan in/out include the kernel)."""
    nn.init.xavier_uniform_(layer.weight, gain=scale)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _conv(cin: int, cout: int, kernel: int, scale: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
    _init_xavier(conv, scale)
    return conv


def _linear(fin: int, fout: int, scale: float = 1.0) -> nn.Linear:
    lin = nn.Linear(fin, fout)
    _init_xavier(lin, scale)
    return lin


class GroupNorm(nn.GroupNorm):
    """EDM's GroupNorm: min(32, C // 4) groups; computed in float32, returned in the input dtype.

    Returning the input dtype keeps bf16 activations bf16 under autocast (autocast would
    otherwise leave the float32 output of group_norm to flow into the next elementwise ops).
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        num_groups = min(32, num_channels // 4)
        if num_groups < 1 or num_channels % num_groups != 0:
            raise ValueError(
                f"GroupNorm needs a channel count divisible into min(32, C//4) groups; got C={num_channels} "
                "(choose model_channels as a multiple of 4, and of 128 above 128 channels per level)"
            )
        super().__init__(num_groups, num_channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)  # float64 stays float64
        y = F.group_norm(x.to(dtype), self.num_groups, self.weight.to(dtype), self.bias.to(dtype), self.eps)
        return y.to(x.dtype)


def downsample(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, H/2, W/2): the [1,1] resample filter, i.e. 2×2 average pooling."""
    return F.avg_pool2d(x, kernel_size=2)


def upsample(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, 2H, 2W): the transposed [1,1] filter (gain 4), i.e. nearest neighbour."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


# ----------------------------------------------------------------------------------------
# Noise-label and class-label embeddings.


class PositionalEmbedding(nn.Module):
    """Sinusoidal features of a scalar label: (B,) -> (B, num_channels) as [sin(l·f), cos(l·f)].

    Frequencies f_k = 10000^(-k/(K-1)), k = 0..K-1, K = num_channels/2 (EDM's endpoint=True).
    """

    def __init__(self, num_channels: int, max_positions: float = 10000.0) -> None:
        super().__init__()
        if num_channels % 2:
            raise ValueError(f"positional embedding needs an even width, got {num_channels}")
        self.half = num_channels // 2
        self.max_positions = float(max_positions)

    def forward(self, labels: Tensor) -> Tensor:
        # Labels reach ~±1600 after scaling: keep the phase in at least float32, never bf16.
        # The frequencies are rebuilt in that dtype (no buffer a .bfloat16() call could round).
        dtype = torch.promote_types(labels.dtype, torch.float32)
        exponent = torch.arange(self.half, device=labels.device, dtype=dtype) / max(self.half - 1, 1)
        freqs = torch.pow(self.max_positions, -exponent)
        arg = labels.to(dtype)[:, None] * freqs[None, :]
        return torch.cat([arg.sin(), arg.cos()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features: (B,) -> (B, num_channels) as [sin(2π l f), cos(2π l f)], f ~ N(0, scale²).

    The frequencies are drawn once at construction (from the global RNG) and saved with the weights.
    """

    def __init__(self, num_channels: int, scale: float) -> None:
        super().__init__()
        if num_channels % 2:
            raise ValueError(f"Fourier embedding needs an even width, got {num_channels}")
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, labels: Tensor) -> Tensor:
        dtype = torch.promote_types(labels.dtype, torch.float32)
        arg = labels.to(dtype)[:, None] * (2 * math.pi * self.freqs.to(dtype))[None, :]
        return torch.cat([arg.sin(), arg.cos()], dim=1)


class LabelEmbedding(nn.Module):
    """Class label (B,) int64 -> (B, num_channels): EDM's Linear applied to sqrt(n)·one_hot(label).

    Stored as a (num_classes, num_channels) table so the lookup is a gather (no one_hot, no host
    sync). Label dropout zeroes the one-hot, i.e. keeps only the bias (the "null" class used by
    classifier-free guidance).
    """

    def __init__(self, num_classes: int, num_channels: int, label_dropout: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.label_dropout = label_dropout
        self.weight = nn.Parameter(torch.empty(num_classes, num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        nn.init.xavier_uniform_(self.weight)  # same bound as Linear(num_classes, num_channels)

    def forward(self, labels: Tensor) -> Tensor:
        rows = F.embedding(labels, self.weight) * math.sqrt(self.num_classes)
        if self.training and self.label_dropout > 0:
            keep = torch.rand(labels.shape[0], 1, device=labels.device) >= self.label_dropout
            rows = rows * keep.to(rows.dtype)
        return rows + self.bias


# ----------------------------------------------------------------------------------------
# The residual block.


class UNetBlock(nn.Module):
    """DDPM++ residual block with optional 2× resampling and single/multi-head self-attention.

    Args:
        in_channels, out_channels: channels of the input and output activations.
        emb_channels: width of the conditioning embedding.
        resample: None, "down" or "up".
        attention: append a self-attention layer.
        num_heads: attention heads (out_channels must be divisible by it).
        dropout: dropout probability before the second conv.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        *,
        resample: str | None = None,
        attention: bool = False,
        num_heads: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if resample not in (None, "down", "up"):
            raise ValueError(f"resample must be None, 'down' or 'up', got {resample!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resample = resample
        self.dropout = float(dropout)
        self.norm0 = GroupNorm(in_channels)
        self.conv0 = _conv(in_channels, out_channels, 3)
        self.affine = _linear(emb_channels, out_channels)
        self.norm1 = GroupNorm(out_channels)
        self.conv1 = _conv(out_channels, out_channels, 3, scale=1e-5)
        # DDPM++ projects the skip with a 1×1 conv whenever the shape changes (resample_proj=True).
        self.skip = _conv(in_channels, out_channels, 1) if (in_channels != out_channels or resample) else None
        self.num_heads = num_heads if attention else 0
        if attention:
            if out_channels % num_heads:
                raise ValueError(f"{out_channels} channels cannot be split into {num_heads} attention heads")
            self.norm2 = GroupNorm(out_channels)
            self.qkv = _conv(out_channels, 3 * out_channels, 1, scale=math.sqrt(0.2))
            self.proj = _conv(out_channels, out_channels, 1, scale=1e-5)

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "down":
            return downsample(x)
        if self.resample == "up":
            return upsample(x)
        return x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: (B, in_channels, H, W), emb: (B, emb_channels) -> (B, out_channels, H', W')."""
        h = self.conv0(self._resample(F.silu(self.norm0(x))))
        h = h + self.affine(emb).to(h.dtype)[:, :, None, None]
        h = F.silu(self.norm1(h))
        if self.dropout > 0:  # skip the call at p = 0 so no RNG is consumed
            h = F.dropout(h, p=self.dropout, training=self.training)
        h = self.conv1(h)
        skip = self._resample(x)
        if self.skip is not None:
            skip = self.skip(skip)
        x = (h + skip) * SKIP_SCALE
        if self.num_heads:
            x = (self.proj(self._attention(self.norm2(x))) + x) * SKIP_SCALE
        return x

    def _attention(self, x: Tensor) -> Tensor:
        """Softmax self-attention over the H·W positions; (B, C, H, W) -> (B, C, H, W).

        qkv channels are ordered (3, heads, head_dim): for a channels_last activation every
        view below is free and head_dim is the contiguous axis the fused kernels want.
        """
        b, c, hgt, wid = x.shape
        heads, d = self.num_heads, c // self.num_heads
        qkv = self.qkv(x).reshape(b, 3, heads, d, hgt * wid)
        # Each (B, heads, L, d); an NCHW activation leaves d strided, which the fused kernels reject.
        q, k, v = (t.transpose(-1, -2) for t in qkv.unbind(1))
        if q.stride(-1) != 1:
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        a = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(d), as in EDM
        a = a.transpose(1, 2).reshape(b, hgt, wid, c).permute(0, 3, 1, 2)  # channels_last view
        # Hand the projection the layout the rest of the network runs in.
        if not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
            a = a.contiguous()
        return a


# ----------------------------------------------------------------------------------------
# The U-Net.


def _per_level(value: float | int | Sequence, levels: int, name: str, kind: type) -> list:
    """One value per level from a scalar or a sequence of length `levels`; clear errors otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        values = [value] * levels
    elif isinstance(value, Sequence) and not isinstance(value, str):
        values = list(value)
        if len(values) != levels:
            raise ValueError(
                f"{name} has {len(values)} entries but channel_mult has {levels} levels; "
                f"give one {name} per level or a single number"
            )
    else:
        raise ValueError(f"{name} must be a number or a sequence of one number per level, got {value!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
            raise ValueError(f"{name} entries must be {kind.__name__}s, got {v!r}")
    return [kind(v) for v in values]


class SongUNet(nn.Module):
    """EDM's DDPM++ U-Net: F(x_in, c_noise, class_labels) -> (B, out_channels, H, W).

    Args:
        img_resolution: H = W of the input; must be divisible by 2^(len(channel_mult) - 1).
        in_channels, out_channels: image channels in and out.
        model_channels: base width; level l has model_channels·channel_mult[l] channels.
        channel_mult: per-level width multipliers (one level per resolution, halving each time).
        num_blocks: residual blocks per level in the encoder (the decoder has one more);
            a number, or one per level.
        attn_resolutions: resolutions whose encoder blocks and last decoder block get attention
            (the first bottleneck block always has it); resolutions not in the U-Net are ignored.
        dropout: dropout probability, a number or one per level.
        embedding_type: "positional" (DDPM++, model_channels features) or "fourier"
            (2·model_channels features, frequencies ~ N(0, fourier_scale²)).
        noise_label_scale: the noise label fed to the embedding is noise_label_scale·c_noise; with
            c_noise = log(σ)/4 the default 1000 gives iCT's 1000·¼·log σ.
        num_classes: number of classes for conditioning; 0 = unconditional.
        label_dropout: probability of replacing the class by the null label in training.
        channel_mult_emb: the embedding width is channel_mult_emb·model_channels.
        channels_per_head: attention head width; None = one head per attention layer, as in
            EDM's DDPM++ (and the paper's released code).
        fourier_scale: std of the random Fourier frequencies (only for embedding_type="fourier").
    """

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_blocks: int | Sequence[int] = 3,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float | Sequence[float] = 0.0,
        embedding_type: str = "positional",
        noise_label_scale: float = 1000.0,
        num_classes: int = 0,
        label_dropout: float = 0.0,
        channel_mult_emb: int = 4,
        channels_per_head: int | None = None,
        fourier_scale: float = ICT_FOURIER_SCALE,
    ) -> None:
        super().__init__()
        levels = len(channel_mult)
        if levels < 1 or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in channel_mult):
            raise ValueError(f"channel_mult must be a non-empty sequence of positive ints, got {channel_mult!r}")
        if img_resolution < 1 or img_resolution % (2 ** (levels - 1)):
            sizes = [img_resolution / 2**lvl for lvl in range(levels)]
            raise ValueError(
                f"img_resolution {img_resolution} is not divisible by 2^{levels - 1}: the {levels} levels "
                f"would have resolutions {sizes}; use fewer levels or pad the images"
            )
        blocks = _per_level(num_blocks, levels, "num_blocks", int)
        drops = _per_level(dropout, levels, "dropout", float)
        if any(n < 0 for n in blocks):
            raise ValueError(f"num_blocks must be >= 0, got {blocks}")
        if any(not 0.0 <= p < 1.0 for p in drops):
            raise ValueError(f"dropout must lie in [0, 1), got {drops}")
        if embedding_type not in EMBEDDING_TYPES:
            raise ValueError(f"embedding_type must be one of {EMBEDDING_TYPES}, got {embedding_type!r}")
        if num_classes < 0 or not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"need num_classes >= 0 and label_dropout in [0, 1), got {num_classes}, {label_dropout}")
        if not math.isfinite(noise_label_scale):
            raise ValueError(f"noise_label_scale must be finite, got {noise_label_scale}")
        if in_channels < 1 or out_channels < 1 or model_channels < 1 or channel_mult_emb < 1:
            raise ValueError("in_channels, out_channels, model_channels and channel_mult_emb must be positive")

        self.img_resolution = img_resolution
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_classes = num_classes
        self.noise_label_scale = float(noise_label_scale)
        emb_channels = model_channels * channel_mult_emb

        def heads(channels: int) -> int:
            if channels_per_head is None:
                return 1
            if channels % channels_per_head:
                raise ValueError(f"{channels} channels are not a multiple of channels_per_head={channels_per_head}")
            return channels // channels_per_head

        def block(cin: int, cout: int, level: int, **kw) -> UNetBlock:
            return UNetBlock(cin, cout, emb_channels, num_heads=heads(cout), dropout=drops[level], **kw)

        # Mapping: noise label (+ class) -> embedding.
        if embedding_type == "positional":
            self.map_noise: nn.Module = PositionalEmbedding(model_channels)
            noise_channels = model_channels
        else:
            self.map_noise = FourierEmbedding(2 * model_channels, scale=fourier_scale)
            noise_channels = 2 * model_channels
        self.map_label = LabelEmbedding(num_classes, noise_channels, label_dropout) if num_classes else None
        self.map_layer0 = _linear(noise_channels, emb_channels)
        self.map_layer1 = _linear(emb_channels, emb_channels)

        # Encoder: every module's output is pushed as a skip.
        self.enc_in = _conv(in_channels, model_channels, 3)
        self.enc = nn.ModuleDict()
        skips = [model_channels]
        cout = model_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level > 0:
                self.enc[f"{res}x{res}_down"] = block(cout, cout, level, resample="down")
                skips.append(cout)
            for idx in range(blocks[level]):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = block(cin, cout, level, attention=res in attn_resolutions)
                skips.append(cout)

        # Decoder: the "_block" modules each concatenate one skip (popped in reverse order).
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == levels - 1:
                self.dec[f"{res}x{res}_in0"] = block(cout, cout, level, attention=True)
                self.dec[f"{res}x{res}_in1"] = block(cout, cout, level)
            else:
                self.dec[f"{res}x{res}_up"] = block(cout, cout, level, resample="up")
            for idx in range(blocks[level] + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == blocks[level] and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = block(cin, cout, level, attention=attn)
        assert not skips, "every encoder output is consumed exactly once"
        self._dec_concat = tuple("_block" in name for name in self.dec)
        self.out_norm = GroupNorm(cout)
        self.out_conv = _conv(cout, out_channels, 3, scale=1e-5)

    def embed(self, noise_labels: Tensor, class_labels: Tensor | None) -> Tensor:
        """Conditioning embedding: noise_labels (B,), class_labels (B,) or None -> (B, emb_channels)."""
        emb = self.map_noise(noise_labels * self.noise_label_scale)
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError(f"this network is class-conditional ({self.num_classes} classes): pass class_labels")
            if class_labels.ndim != 1 or class_labels.dtype not in (torch.int32, torch.int64):
                raise ValueError(
                    f"class_labels must be integer class indices of shape (B,), got {class_labels.dtype} "
                    f"{tuple(class_labels.shape)}"
                )
            emb = emb + self.map_label(class_labels)
        emb = emb.to(self.map_layer0.weight.dtype)
        return F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """x: (B, in_channels, R, R), noise_labels (c_noise): (B,), class_labels: (B,) int or None.

        Returns (B, out_channels, R, R) in the compute dtype (bf16 under autocast). Class labels are
        ignored by an unconditional network (num_classes = 0).
        """
        r = self.img_resolution
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[2] != r or x.shape[3] != r:
            raise ValueError(f"expected x of shape (B, {self.in_channels}, {r}, {r}), got {tuple(x.shape)}")
        if noise_labels.shape != (x.shape[0],):
            raise ValueError(f"noise_labels must have shape ({x.shape[0]},), got {tuple(noise_labels.shape)}")
        emb = self.embed(noise_labels, class_labels)

        h = self.enc_in(x)
        skips = [h]
        for blk in self.enc.values():
            h = blk(h, emb)
            skips.append(h)
        for blk, concat in zip(self.dec.values(), self._dec_concat):
            if concat:
                h = torch.cat([h, skips.pop()], dim=1)
            h = blk(h, emb)
        return self.out_conv(F.silu(self.out_norm(h)))
