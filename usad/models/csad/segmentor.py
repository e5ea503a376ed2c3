"""CSAD's component segmentation network (Sec. 3.2) and its training, as the official code runs it.

API (used by ``usad.models.csad.method``; also in ``.notes/csad_api.md``)::

    seg = Segmentor(section, device)          # section = cfg.csad (or cfg.aecsad)
    seg.fit(images, label_maps, unlabelled_images, segments=None, backgrounds=None, num_classes=None)
        # images uint8 (N_l, S, S, 3) RGB, label_maps uint8 (N_l, S, S) with 0 = background,
        # unlabelled_images uint8 (N_u, S, S, 3); segments / backgrounds uint8 (N_l, S, S): LSA when both given
    seg.fit_pseudo(labels)                    # the same from a pseudo_labels.PseudoLabels
    logits = seg.segment(x)                   # x float (N, 3, S, S) ImageNet-normalised -> (N, C, S, S)
    feats = seg.encode(x); logits = seg.decode(feats)   # (layer1, layer2, layer3) of the frozen WRN-50
    seg.state_dict() / seg.load_state_dict(state)        # decoder tensors + "num_classes"
    x = normalize(load_images(files, S), device)

The network: a frozen WideResNet-50 (tv2_in1k weights, i.e. torchvision
``IMAGENET1K_V2``; layers 1-3) and a DeepLabV3+-style decoder: ASPP (1x1, three
dilated 3x3, image pooling) on layer 3 at S/16, a 1x1 projection, upsampling to
S/4, concatenation with a 1x1 reduction of layer 1, two 3x3 conv-BN-ReLU, a 1x1
classifier, and bilinear upsampling to S. BatchNorm momentum is the code's 0.999.

Training (the code's schedule): Adam, ``epochs`` epochs of ``N_l // batch_size``
steps; each step draws a labelled batch (LSA with probability ``lsa_ratio``, then a
small shift-scale-rotate and brightness-contrast jitter), an unlabelled batch and,
for the histogram loss, the label map of a random labelled image. The first
``sup_only_epochs`` use the labelled losses only. The last epoch's weights are kept
(the code keeps the epoch with the best *test-set* AUROC: not done here). ``segmentor.schedule``:
``none`` keeps the rate (the code), ``cosine`` anneals it to ``min_lr`` (AeCSAD).

Why one module of ~430 lines: the frozen encoder, the decoder and the training loop are what the official
``train_segmentor.py`` and its model file define together, and the golden tests
(``tests/models/csad/test_csad_seg_golden.py``) compare them as one unit (logits, one step's losses and
updates); the losses and the LSA augmentation already live in ``seg_losses.py`` and ``lsa.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from usad.core.backbones import BackboneWeightsError, first_line, load_state_file
from usad.core.config import ConfigError
from usad.core.errors import UsadError
from usad.models.csad import lsa
from usad.models.csad.seg_losses import segmentation_losses

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WRN50_LAYERS = [3, 4, 6, 3]     # WideResNet-50-2: Bottleneck blocks per stage ...
WRN50_WIDTH = 128               # ... and width per group (torchvision's wide_resnet50_2)
UNUSED_KEYS = ("fc.",)          # never run


def weights_file(path, key: str) -> Path:
    """An existing local weights file, else one error naming the config key."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise BackboneWeightsError(f"{key} = {str(p)!r} does not exist; give the path of a local WideResNet-50-2 "
                                   f"state dict (.pth / .safetensors)")
    return p


def learning_rate_schedule(opt, c, total_steps: int):
    """``segmentor.schedule``: ``none`` keeps ``lr`` (CSAD's code), ``cosine`` anneals it to ``min_lr`` over every
    optimisation step (AeCSAD, Sec. IV); None for a constant rate."""
    kind = c.get("schedule", "none")
    if kind == "none":
        return None
    if kind != "cosine":
        raise ValueError(f"segmentor.schedule must be none or cosine, got {kind!r}")
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1), eta_min=float(c["min_lr"]))


class SegmentorError(UsadError, ValueError):
    """Training data the segmentor cannot use (shapes, too few images)."""


# --------------------------------------------------------------------------- images


def load_images(files, size: int) -> np.ndarray:
    """RGB uint8 (N, size, size, 3): each file resized with PIL bilinear (the code's ``transforms.Resize``)."""
    out = np.empty((len(files), size, size, 3), np.uint8)
    for i, f in enumerate(files):
        with Image.open(f) as im:
            out[i] = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
    return out


def normalize(images: np.ndarray, device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) on ``device``, ImageNet-normalised (ToTensor + Normalize)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


# --------------------------------------------------------------------------- the frozen encoder


def build_wide_resnet(weights: str | None, pretrained: bool, kwargs: dict | None, key: str,
                      official: str = "IMAGENET1K_V2"):
    """A torchvision WideResNet-50-2 (``kwargs`` may shrink it: ``layers``, ``width_per_group``, for tests),
    with weights from the local file ``weights`` (a torchvision or timm state dict: the key names agree),
    else torchvision's ``official`` weights when ``pretrained``, else random (also for ``weights="random"``;
    a loud warning). ``key`` names the config key in errors."""
    import torchvision
    from torchvision.models.resnet import Bottleneck, ResNet

    kwargs = dict(kwargs or {})
    layers = list(kwargs.pop("layers", WRN50_LAYERS))
    width = int(kwargs.pop("width_per_group", kwargs.pop("base_width", WRN50_WIDTH)))  # torchvision / timm name
    if kwargs:
        raise ConfigError(f"config key '{key.rsplit('.', 1)[0]}.backbone_kwargs' takes layers and width_per_group "
                          f"(or base_width) only, got {sorted(kwargs)}")
    model = ResNet(Bottleneck, layers, width_per_group=width)
    if weights == "random":
        weights, pretrained = None, False
    if weights is not None:
        path = weights_file(weights, key)
        try:
            state = load_state_file(path)
        except Exception as e:
            raise BackboneWeightsError(f"{key} = {str(path)!r} is not a readable state dict: {first_line(e)}") from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(UNUSED_KEYS)]
        if missing or unexpected:
            raise BackboneWeightsError(f"{key} = {str(path)!r} does not fit a WideResNet-50-2 "
                                       f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    elif pretrained:
        if layers != WRN50_LAYERS or width != WRN50_WIDTH:
            raise ConfigError(f"{key}: official weights exist only for the full WideResNet-50-2; "
                              f"give a local file or drop backbone_kwargs")
        try:
            official_model = torchvision.models.wide_resnet50_2(weights=official)
        except Exception as e:
            raise BackboneWeightsError(
                f"could not get torchvision's wide_resnet50_2 {official} weights: {first_line(e)}; offline, pass "
                f"--set {key}=/path/to/state_dict.pth (the timm wide_resnet50_2.tv2_in1k file is the same weights)"
            ) from None
        model.load_state_dict(official_model.state_dict())
    else:
        log.warning("!" * 78 + "\n!! %s: WideResNet-50 with RANDOM weights (no file, pretrained=false): a smoke run "
                    "only\n" + "!" * 78, key)
    return model.eval().requires_grad_(False)


class WideResNetEncoder(nn.Module):
    """Frozen ResNet returning the outputs of the stages listed in ``stages`` (1 = layer1 ... 4 = layer4)."""

    def __init__(self, net, stages=(1, 2, 3)):
        super().__init__()
        self.stages = tuple(stages)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.ModuleList([getattr(net, f"layer{i}") for i in range(1, max(self.stages) + 1)])
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True):  # always frozen, BatchNorm in eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out, h = [], self.stem(x)
        for i, layer in enumerate(self.layers, start=1):
            h = layer(h)
            if i in self.stages:
                out.append(h)
        return tuple(out)


# --------------------------------------------------------------------------- the decoder


def conv_bn_relu(cin: int, cout: int, k: int, dilation: int, momentum: float, relu: bool = True) -> nn.Sequential:
    pad = dilation * (k // 2)
    mods = [nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False), nn.BatchNorm2d(cout, momentum=momentum)]
    return nn.Sequential(*mods, nn.ReLU()) if relu else nn.Sequential(*mods)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, dilated 3x3 at each rate, and global pooling, concatenated."""

    def __init__(self, cin: int, cout: int, rates, momentum: float):
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(cin, cout, 1, 1, momentum)] +
                                      [conv_bn_relu(cin, cout, 3, r, momentum) for r in rates])
        self.pool = conv_bn_relu(cin, cout, 1, 1, momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x.mean((2, 3), keepdim=True)).expand(-1, -1, *x.shape[2:])  # bilinear from 1x1 = copy
        return torch.cat([b(x) for b in self.branches] + [pooled], 1)


class Decoder(nn.Module):
    """DeepLabV3+-style head on (layer1, layer3): logits at the input size."""

    def __init__(self, num_classes: int, in_dims=(256, 1024), rates=(6, 12, 18), aspp_dim: int = 256,
                 skip_dim: int = 48, head_dim: int = 256, momentum: float = 0.999, size: int = 256):
        super().__init__()
        self.size = size
        self.aspp = ASPP(in_dims[1], aspp_dim, rates, momentum)
        self.skip = conv_bn_relu(in_dims[0], skip_dim, 1, 1, momentum)
        self.project = conv_bn_relu(aspp_dim * (len(rates) + 2), head_dim, 1, 1, momentum)
        self.head = nn.Sequential(conv_bn_relu(head_dim + skip_dim, head_dim, 3, 1, momentum),
                                  conv_bn_relu(head_dim, head_dim, 3, 1, momentum),
                                  nn.Conv2d(head_dim, num_classes, 1))

    def forward(self, f1: torch.Tensor, f3: torch.Tensor) -> torch.Tensor:
        s = self.size
        deep = F.interpolate(f3, size=[s // 16, s // 16], mode="bilinear", align_corners=False)
        deep = self.project(self.aspp(deep))
        deep = F.interpolate(deep, size=[s // 4, s // 4], mode="bilinear", align_corners=False)
        out = self.head(torch.cat([deep, self.skip(f1)], 1))
        return F.interpolate(out, size=[s, s], mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- augmentation


def jitter(image: np.ndarray, labels: np.ndarray, aug, rs: np.random.RandomState):
    """The code's light augmentation, each part with probability ``aug.p``: shift-scale-rotate (constant 0 border;
    labels nearest) and brightness-contrast."""
    h, w = labels.shape
    if rs.rand() < aug["p"]:
        angle = rs.uniform(-aug["rotate"], aug["rotate"])
        scale = 1 + rs.uniform(-aug["scale"], aug["scale"])
        dx, dy = rs.uniform(-aug["shift"], aug["shift"], 2)
        m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), angle, scale)
        m[:, 2] += (dx * w, dy * h)
        image = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        labels = cv2.warpAffine(labels, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if rs.rand() < aug["p"]:
        alpha = 1 + rs.uniform(-aug["contrast"], aug["contrast"])
        beta = rs.uniform(-aug["brightness"], aug["brightness"]) * 255
        image = np.clip(image.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)
    return image, labels


# --------------------------------------------------------------------------- the segmentor


def _get(section, key, default=None):
    return section.get(key, default)


def check_segmentor(section) -> None:
    """Checks without compute (call before the pseudo-labels): batch size, image size, the encoder's weights file."""
    name = _get(section, "name", "csad")
    if int(section["segmentor"]["batch_size"]) < 2:
        raise ConfigError(f"config key '{name}.segmentor.batch_size' must be >= 2 (BatchNorm of the pooled ASPP "
                          f"branch needs two images), got {section['segmentor']['batch_size']}")
    if int(section["image_size"]) % 16:
        raise ConfigError(f"config key '{name}.image_size' must be a multiple of 16, got {section['image_size']}")
    weights = _get(section, "backbone_weights")
    if weights not in (None, "random"):
        weights_file(weights, f"{name}.backbone_weights")


class Segmentor:
    """Frozen WRN-50 encoder + trained decoder (see the module docstring for the API)."""

    def __init__(self, section, device, category: str | None = None):
        self.section = section
        self.category = category
        self.device = torch.device(device)
        self.cfg = section["segmentor"]
        check_segmentor(section)
        self.size = int(section["image_size"])
        key = f"{_get(section, 'name', 'csad')}.backbone_weights"
        net = build_wide_resnet(_get(section, "backbone_weights"), bool(_get(section, "pretrained", True)),
                                _get(section, "backbone_kwargs"), key)
        self.encoder = WideResNetEncoder(net, (1, 2, 3)).to(self.device)
        self.decoder: Decoder | None = None
        self.history: list[dict] = []

    # ---------------------------------------------------------------- building
    def build_decoder(self, num_classes: int) -> Decoder:
        c = self.cfg
        self.decoder = Decoder(int(num_classes), rates=tuple(c["aspp_rates"]), aspp_dim=int(c["aspp_dim"]),
                               skip_dim=int(c["skip_dim"]), head_dim=int(c["head_dim"]),
                               momentum=float(c["bn_momentum"]), size=self.size).to(self.device)
        return self.decoder

    @property
    def num_classes(self) -> int:
        return self.decoder.head[-1].out_channels

    # ---------------------------------------------------------------- inference
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    @torch.no_grad()
    def decode(self, feats) -> torch.Tensor:
        self.decoder.eval()
        return self.decoder(feats[0], feats[2])

    @torch.no_grad()
    def segment(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x.to(self.device)))

    # ---------------------------------------------------------------- saving
    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"decoder.{k}": v.detach().cpu().clone() for k, v in self.decoder.state_dict().items()}
        state["num_classes"] = torch.tensor(self.num_classes)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.build_decoder(int(state["num_classes"]))
        self.decoder.load_state_dict({k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")})
        self.decoder.eval()

    # ---------------------------------------------------------------- training
    def fit_pseudo(self, labels) -> Segmentor:
        lab, unl = labels.labelled, labels.unlabelled
        self.category = labels.info.get("category", self.category)
        return self.fit(labels.images[lab], labels.label_maps[lab], labels.images[unl], labels.segments[lab],
                        labels.backgrounds[lab], labels.num_classes)

    def fit(self, images, label_maps, unlabelled_images, segments=None, backgrounds=None, num_classes=None,
            seed: int | None = None) -> Segmentor:
        images, label_maps = np.asarray(images), np.asarray(label_maps)
        unlabelled_images = np.asarray(unlabelled_images)
        self._check_fit_inputs(images, label_maps, unlabelled_images, segments, backgrounds)
        c = self.cfg
        num_classes = int(label_maps.max()) + 1 if num_classes is None else int(num_classes)
        seed = int(torch.randint(2 ** 31 - 1, (1,)).item()) if seed is None else seed  # follows the global seed
        torch.manual_seed(seed)
        rs = np.random.RandomState(seed)
        self.build_decoder(num_classes)
        opt = torch.optim.Adam(self.decoder.parameters(), lr=float(c["lr"]), weight_decay=float(c["weight_decay"]))
        n_l, n_u, batch = len(images), len(unlabelled_images), int(c["batch_size"])
        steps = n_l // batch
        schedule = learning_rate_schedule(opt, c, int(c["epochs"]) * steps)
        self.lr_history: list[float] = []
        lsa_cfg = self._lsa_config() if segments is not None and backgrounds is not None else None
        unl_order, unl_pos = rs.permutation(n_u), 0
        self.history = []
        bar = tqdm(range(int(c["epochs"])), desc="csad segmentor", leave=False)
        for epoch in bar:
            sup_only = epoch < int(c["sup_only_epochs"])
            order = rs.permutation(n_l)
            sums: dict[str, float] = {}
            for step in range(steps):
                idx = order[step * batch:(step + 1) * batch]
                x, y, y_hist = self._labelled_batch(idx, images, label_maps, segments, backgrounds, lsa_cfg, rs)
                xu = None
                if not sup_only and n_u:
                    take = min(batch, n_u)
                    if unl_pos + take > n_u:
                        unl_order, unl_pos = rs.permutation(n_u), 0
                    xu = normalize(unlabelled_images[unl_order[unl_pos:unl_pos + take]], self.device)
                    unl_pos += take
                self.lr_history.append(opt.param_groups[0]["lr"])
                losses = self.train_step(opt, x, y, xu, y_hist, sup_only)
                if schedule is not None:
                    schedule.step()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v
            self.history.append({k: v / max(steps, 1) for k, v in sums.items()})
            if self.history[-1]:
                bar.set_postfix(loss=f"{self.history[-1]['total']:.4f}")
        self.decoder.eval()
        return self

    def train_step(self, opt, x, y, xu, y_hist, sup_only: bool) -> dict[str, float]:
        """One optimisation step on a labelled batch (normalised images ``x``, labels ``y``), an unlabelled batch
        ``xu`` (or None) and histogram targets ``y_hist``; returns each weighted loss."""
        c = self.cfg
        self.decoder.train()
        f = self.encode(x)
        sup = self.decoder(f[0], f[2])
        unsup = None
        if xu is not None:
            fu = self.encode(xu)
            unsup = self.decoder(fu[0], fu[2])
        losses = segmentation_losses(sup, y, unsup, y_hist, c["loss_weights"], float(c["focal_gamma"]),
                                     float(c["focal_smooth"]), sup_only)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    def _labelled_batch(self, idx, images, label_maps, segments, backgrounds, lsa_cfg, rs):
        xs, ys, hs = [], [], []
        for i in idx:
            img, lab = images[i], label_maps[i]
            if lsa_cfg is not None and rs.rand() > 1.0 - float(self.cfg["lsa_ratio"]):
                img, lab = lsa.augment(img, segments[i], lab, backgrounds[i], lsa_cfg, rs)
            img, lab = jitter(img, lab, self.cfg["aug"], rs)
            xs.append(img)
            ys.append(lab)
            hs.append(label_maps[rs.randint(len(label_maps))])  # Eq. 2 target: a random labelled image
        y = torch.from_numpy(np.stack(ys).astype(np.int64)).to(self.device)
        y_hist = torch.from_numpy(np.stack(hs).astype(np.int64)).to(self.device)
        return normalize(np.stack(xs), self.device), y, y_hist

    def _lsa_config(self) -> dict:
        """``lsa`` with the category's ``lsa_min_distance`` (category_kwargs) when there is one."""
        cfg = dict(self.section["lsa"])
        if self.category is not None:
            from usad.models.csad.masks import category_settings

            cfg["min_distance"] = float(category_settings(self.section, self.category)["lsa_min_distance"])
        return cfg

    def _check_fit_inputs(self, images, label_maps, unlabelled, segments, backgrounds) -> None:
        s = self.size
        if images.ndim != 4 or images.shape[1:] != (s, s, 3) or images.dtype != np.uint8:
            raise SegmentorError(f"labelled images must be uint8 (N, {s}, {s}, 3), got {images.dtype} {images.shape}")
        if label_maps.shape != images.shape[:3]:
            raise SegmentorError(f"label maps must be (N, {s}, {s}) like the images, got {label_maps.shape}")
        if len(images) < int(self.cfg["batch_size"]):
            raise SegmentorError(f"{len(images)} labelled images: the segmentor needs at least segmentor.batch_size = "
                                 f"{self.cfg['batch_size']} (use more normal images or a smaller batch)")
        if len(unlabelled) and (unlabelled.ndim != 4 or unlabelled.shape[1:] != (s, s, 3)):
            raise SegmentorError(f"unlabelled images must be uint8 (N, {s}, {s}, 3), got {unlabelled.shape}")
        if (segments is None) != (backgrounds is None):
            raise SegmentorError("LSA needs both segments and backgrounds (or neither)")
        for name, arr in (("segments", segments), ("backgrounds", backgrounds)):
            if arr is not None and np.asarray(arr).shape != label_maps.shape:
                raise SegmentorError(f"{name} must have the label maps' shape {label_maps.shape}")
