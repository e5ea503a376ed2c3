"""Local-global student-teacher (LGST, CSAD Sec. 3.4; AeCSAD Sec. III-F), as the official code computes it.

- Teacher: the frozen WideResNet-50's layer-2 and layer-3 features (the segmentor's encoder, one forward pass for
  both branches), each resized bilinearly to ``feat_size`` x ``feat_size``, concatenated, smoothed by a 3 x 3 mean
  (zero padding counted), then a frozen random 1 x 1 projection to ``channels``; normalised per channel by the mean
  and standard deviation over the training images.
- Local student: a small CNN (33 x 33 receptive field) with two 1 x 1 heads: one regresses the teacher (local map),
  the other the global student (global map).
- Global student: a convolutional autoencoder squeezing the image to 1 x 1 and upsampling back; AeCSAD inserts
  self-attention blocks (Eq. 5) after chosen encoder and decoder layers.
- Maps: mean over channels of the squared differences; each normalised as 0.1 (m - q_a) / (q_b - q_a) with the
  0.9 and 0.995 quantiles of that map over the validation images; resized to the image size and summed; the image
  score is the maximum.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize (half-pixel centres); the identity when the size already matches."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class TeacherProjection(nn.Module):
    """Layers 2 + 3 of the frozen backbone -> aligned, 3 x 3-averaged, randomly projected features."""

    def __init__(self, in_channels: int, channels: int, feat_size: int):
        super().__init__()
        self.feat_size = feat_size
        self.proj = nn.Conv2d(in_channels, channels, kernel_size=1)
        self.requires_grad_(False)

    def forward(self, f2: torch.Tensor, f3: torch.Tensor) -> torch.Tensor:
        x = torch.cat([resize(f2, self.feat_size), resize(f3, self.feat_size)], 1)
        x = F.avg_pool2d(x, 3, stride=1, padding=1)
        return self.proj(x)


class LocalStudent(nn.Module):
    """Four convolutions with two average poolings (33 x 33 receptive field), then two 1 x 1 heads."""

    def __init__(self, channels: int, feat_size: int, widths: tuple[int, int], padding: bool = True):
        super().__init__()
        p = 1 if padding else 0
        w1, w2 = widths
        self.feat_size = feat_size
        self.conv1 = nn.Conv2d(3, w1, 4, padding=3 * p)
        self.conv2 = nn.Conv2d(w1, w2, 4, padding=3 * p)
        self.conv3 = nn.Conv2d(w2, w2, 1)
        self.conv4 = nn.Conv2d(w2, w2, 3, padding=p)
        self.conv5 = nn.Conv2d(w2, channels, 4)
        self.pool1 = nn.AvgPool2d(2, 2, padding=p)
        self.pool2 = nn.AvgPool2d(2, 2, padding=p)
        self.conv_st = nn.Conv2d(channels, channels, 1)   # head of the local map (regresses the teacher)
        self.conv_ae = nn.Conv2d(channels, channels, 1)   # head of the global map (regresses the global student)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(F.relu(self.conv2(x)))
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = resize(F.relu(self.conv5(x)), self.feat_size)
        return self.conv_st(x), self.conv_ae(x)


class SelfAttention2d(nn.Module):
    """AeCSAD Eq. 5 on a feature map: tokens = pixels; x + softmax(Q K^T / sqrt(d_k)) V (residual fusion)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention heads ({heads}) must divide the channels ({channels})")
        self.heads = heads
        self.qkv = nn.Linear(channels, 3 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)                                   # (B, HW, C)
        q, k, v = self.qkv(tokens).view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)                            # (B, heads, HW, C / heads)
        return x + out.transpose(1, 2).reshape(b, h * w, c).transpose(1, 2).reshape(b, c, h, w)


class GlobalStudent(nn.Module):
    """Autoencoder: six strided convolutions to 1 x 1, then bilinear upsamplings to ``up_sizes`` each followed by a
    4 x 4 convolution (and dropout), a resize to ``feat_size`` and two 3 x 3 convolutions.

    ``encoder_attention`` / ``decoder_attention``: 1-based indices of the encoder / decoder layers followed by a
    self-attention block (AeCSAD: [4, 5] and [3, 5]); ``decoder_side`` "after" puts a decoder block on the layer's
    output (16 x 16 / 64 x 64 at 256 px), "before" on its upsampled input (15 x 15 / 63 x 63, the paper's text).
    """

    def __init__(self, channels: int, feat_size: int, base: int, up_sizes: list[int], dropout: float,
                 encoder_attention=(), decoder_attention=(), decoder_side: str = "after", heads: int = 1):
        super().__init__()
        self.feat_size, self.up_sizes, self.decoder_side = feat_size, list(up_sizes), decoder_side
        half = base // 2
        enc = [(3, half), (half, half), (half, base), (base, base), (base, base)]
        for i, (cin, cout) in enumerate(enc, 1):
            setattr(self, f"enconv{i}", nn.Conv2d(cin, cout, 4, stride=2, padding=1))
        self.enconv6 = nn.Conv2d(base, base, 8)
        for i in range(1, len(up_sizes) + 1):
            setattr(self, f"deconv{i}", nn.Conv2d(base, base, 4, padding=2))
            setattr(self, f"dropout{i}", nn.Dropout(dropout))
        n = len(up_sizes)
        setattr(self, f"deconv{n + 1}", nn.Conv2d(base, base, 3, padding=1))
        setattr(self, f"deconv{n + 2}", nn.Conv2d(base, channels, 3, padding=1))
        self.enc_attn = nn.ModuleDict({str(i): SelfAttention2d(base, heads) for i in encoder_attention})
        self.dec_attn = nn.ModuleDict({str(i): SelfAttention2d(base, heads) for i in decoder_attention})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()  # dropout masks follow the memory layout: NCHW as the code's inputs
        for i in range(1, 6):
            x = F.relu(getattr(self, f"enconv{i}")(x))
            if str(i) in self.enc_attn:
                x = self.enc_attn[str(i)](x)
        x = self.enconv6(x)
        for i, size in enumerate(self.up_sizes, 1):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            attn = self.dec_attn[str(i)] if str(i) in self.dec_attn else None
            if attn is not None and self.decoder_side == "before":
                x = attn(x)
            x = getattr(self, f"dropout{i}")(F.relu(getattr(self, f"deconv{i}")(x)))
            if attn is not None and self.decoder_side == "after":
                x = attn(x)
        n = len(self.up_sizes)
        x = F.interpolate(x, size=(self.feat_size, self.feat_size), mode="bilinear", align_corners=False)
        x = F.relu(getattr(self, f"deconv{n + 1}")(x))
        return getattr(self, f"deconv{n + 2}")(x)


def quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile (linear interpolation) over all elements, without its 16 M-element limit."""
    flat = x.reshape(-1)
    pos = q * (flat.numel() - 1)
    lo = int(pos)
    hi = min(lo + 1, flat.numel() - 1)
    low = flat.kthvalue(lo + 1).values
    high = flat.kthvalue(hi + 1).values if hi != lo else low
    return torch.lerp(low, high, torch.tensor(pos - lo, dtype=flat.dtype, device=flat.device))


class LGST(nn.Module):
    """Teacher projection, local student, global student and the statistics that normalise their maps."""

    def __init__(self, s):
        """``s``: the ``lgst`` config section."""
        super().__init__()
        self.s = s
        self.teacher = TeacherProjection(s.teacher_in_channels, s.channels, s.feat_size)
        self.local = LocalStudent(s.channels, s.feat_size, tuple(s.student_widths), s.padding)
        att = s.attention
        self.global_ = GlobalStudent(s.channels, s.feat_size, s.ae_base, s.ae_up_sizes, s.ae_dropout,
                                     att.encoder, att.decoder, att.decoder_side, att.heads)
        self.register_buffer("teacher_mean", torch.zeros(1, s.channels, 1, 1))
        self.register_buffer("teacher_std", torch.ones(1, s.channels, 1, 1))
        self.register_buffer("quantiles", torch.full((4,), float("nan")))  # q_st_a, q_st_b, q_ae_a, q_ae_b

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen
        return self

    def students(self):
        return [self.local, self.global_]

    def teacher_features(self, f2: torch.Tensor, f3: torch.Tensor) -> torch.Tensor:
        """Teacher output normalised by the training statistics."""
        return (self.teacher(f2, f3) - self.teacher_mean) / self.teacher_std

    @torch.no_grad()
    def set_teacher_stats(self, feature_batches) -> None:
        """Channel mean, then channel std (population) of the teacher over the training images.

        ``feature_batches``: an iterable (callable) of (f2, f3) batches; each image weighs the same (the code
        averages batch means, the same when every batch has the same size).
        """
        total, n = 0.0, 0
        for f2, f3 in feature_batches():
            t = self.teacher(f2, f3)
            total = total + t.mean(dim=(2, 3)).sum(0)
            n += t.shape[0]
        mean = (total / n)[None, :, None, None]
        total = 0.0
        for f2, f3 in feature_batches():
            total = total + ((self.teacher(f2, f3) - mean) ** 2).mean(dim=(2, 3)).sum(0)
        self.teacher_mean.copy_(mean)
        self.teacher_std.copy_(torch.sqrt(total / n)[None, :, None, None])

    def raw_maps(self, x: torch.Tensor, f2: torch.Tensor, f3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(local, global) maps (B, 1, feat, feat): channel means of the squared differences."""
        t = self.teacher_features(f2, f3)
        st, ae_head = self.local(x)
        ae = self.global_(x)
        return ((t - st) ** 2).mean(1, keepdim=True), ((ae - ae_head) ** 2).mean(1, keepdim=True)

    @torch.no_grad()
    def set_quantiles(self, map_batches) -> None:
        """The q_a and q_b quantiles of each raw map over all validation pixels (the code's map normalisation)."""
        st, ae = zip(*map_batches())
        st, ae = torch.cat(st), torch.cat(ae)
        qa, qb = self.s.map_quantiles
        self.quantiles.copy_(torch.stack([quantile(st, qa), quantile(st, qb), quantile(ae, qa), quantile(ae, qb)]))

    def normalise(self, m: torch.Tensor, start: torch.Tensor, end: torch.Tensor, name: str) -> torch.Tensor:
        if end - start > self.s.quantile_min_gap:
            return self.s.map_scale * (m - start) / (end - start)
        log.warning("LGST %s map: quantile gap %g <= %g, the map is left unnormalised (as the code does)",
                    name, float(end - start), self.s.quantile_min_gap)
        return m

    def normalise_maps(self, st: torch.Tensor, ae: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw maps normalised by the validation quantiles (unchanged before they are set)."""
        q = self.quantiles
        if torch.isnan(q).any():
            return st, ae
        return self.normalise(st, q[0], q[1], "local"), self.normalise(ae, q[2], q[3], "global")

    @torch.no_grad()
    def normalised_maps(self, x: torch.Tensor, f2: torch.Tensor, f3: torch.Tensor):
        """(local, global) maps (B, 1, feat, feat), normalised by the validation quantiles once they are set."""
        return self.normalise_maps(*self.raw_maps(x, f2, f3))

    @staticmethod
    def combine(st: torch.Tensor, ae: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores (B,), maps (B, size, size)): both maps resized to the image size, summed; the score is the maximum."""
        combined = resize(st, size)[:, 0] + resize(ae, size)[:, 0]
        return combined.flatten(1).amax(1), combined

    @torch.no_grad()
    def predict(self, x, f2, f3) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores (B,), maps (B, H, W)) of images ``x`` with backbone features (f2, f3)."""
        return self.combine(*self.normalised_maps(x, f2, f3), x.shape[-1])
