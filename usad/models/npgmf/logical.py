"""NPGMF's logical anomaly detection module (Sec. III-A, Fig. 3): reverse distillation guided by normality priors.

    f1, f2, f3 = E(x)                      frozen ImageNet ResNet (encoder.py)
    z          = OCE(f1, f2, f3)           RD4AD's one-class embedding (oce.py)
    q_k        = VQ_k(A_k(f_k))            atrous block + level codebook, Eq. 1-2 (atrous.py, vq.py)
    g          = FC(CLIP_text(category))   global prior, broadcast to each level (prior.py)
    r1..r3, x' = D(z, g, q1..q3)           LeWin fusions + de-ResNet stages + image head (decoder.py)

Training (Eq. 6, losses.py): Adam with betas (0.5, 0.999) on everything but the encoder, batch 1,
50 epochs (paper); the learning rate is RD4AD's (the paper's value was lost). The last epoch's
weights are kept (no checkpoint is picked on test data). Map: Eq. 7 at the logical image size.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
from tqdm import tqdm

from usad.models.npgmf.atrous import AtrousBlock
from usad.models.npgmf.decoder import FusionDecoder
from usad.models.npgmf.encoder import ResNetEncoder
from usad.models.npgmf.losses import feature_loss, image_loss, logical_map, total_loss
from usad.models.npgmf.oce import BASE_CHANNELS, BLOCKS, OneClassEmbedding
from usad.models.npgmf.prior import GlobalPrior
from usad.models.npgmf.vq import VectorQuantiser

log = logging.getLogger(__name__)

LEVEL_STRIDES = (4, 8, 16)  # encoder levels 1..3 (bottleneck: 32)


class LogicalModel(nn.Module):
    """Everything trainable of the logical module (the frozen encoder is kept beside it, not in its state)."""

    def __init__(self, cfg, block: str, text_dim: int):
        super().__init__()
        e = BLOCKS[block].expansion
        levels = [BASE_CHANNELS * e * m for m in (1, 2, 4)]
        self.image_size = cfg.image_size
        self.oce = OneClassEmbedding(block, cfg.oce_blocks)
        self.atrous = nn.ModuleList([AtrousBlock(c, cfg.code_channels, list(cfg.atrous_rates)) for c in levels])
        self.codebooks = nn.ModuleList([VectorQuantiser(cfg.codebook_size, cfg.code_channels, cfg.commitment)
                                        for _ in levels])
        self.prior = GlobalPrior(text_dim, cfg.prior_channels)
        self.decoder = FusionDecoder(block, list(cfg.decoder_layers), cfg.prior_channels, cfg.code_channels,
                                     cfg.image_size, cfg.lewin, list(cfg.image_head_channels))

    def forward(self, features: list[torch.Tensor], embedding: torch.Tensor) -> dict:
        """Encoder maps [f1, f2, f3] and the (D,) text embedding -> reconstructions, image, VQ loss."""
        z = self.oce(features)
        quantised = [vq(atrous(f)) for vq, atrous, f in zip(self.codebooks, self.atrous, features)]
        sizes = [tuple(z.shape[-2:])] + [tuple(f.shape[-2:]) for f in features[::-1]]
        prior = self.prior(embedding, z.shape[0], sizes)
        recon, image = self.decoder(z, prior, [q.codes for q in quantised])
        return {"recon": recon, "image": image, "vq_loss": sum(q.loss for q in quantised)}


def check_image_size(size: int, win_size: int, key: str) -> None:
    """The bottleneck is 1/32 of the image and each LeWin map must split into whole windows."""
    from usad.core.config import ConfigError

    if size % 32:
        raise ConfigError(f"config key '{key}.image_size' = {size} must be a multiple of 32 (the one-class "
                          f"embedding is 1/32 of the image)")
    for stride in (32, *LEVEL_STRIDES):
        side = size // stride
        if side > win_size and side % win_size:
            raise ConfigError(f"config key '{key}.image_size' = {size}: the {side} x {side} map (1/{stride}) does not "
                              f"split into {win_size} x {win_size} LeWin windows; use a multiple of {32 * win_size}")


class LogicalModule:
    """Encoder + trainable model on one device: fit on normal images, Eq. 7 maps."""

    def __init__(self, cfg, device: torch.device, text_embedding: torch.Tensor, key: str = "npgmf.logical",
                 precision: str = "fp32"):
        self.cfg, self.device = cfg, device
        self.encoder = ResNetEncoder(cfg.backbone, cfg.pretrained, cfg.weights, key=key).to(device)
        self.encoder.precision = precision
        self.embedding = text_embedding.float().to(device)
        self.model = LogicalModel(cfg, self.encoder.block, self.embedding.numel()).to(device)

    def losses(self, images: torch.Tensor) -> dict:
        images = images.to(self.device, non_blocking=True)
        features = self.encoder(images)
        out = self.model(features, self.embedding)
        l_feat, l_img = feature_loss(features, out["recon"]), image_loss(images, out["image"])
        loss = total_loss(l_feat, l_img, out["vq_loss"], list(self.cfg.loss_weights))
        return {"loss": loss, "feature": l_feat, "image": l_img, "vq": out["vq_loss"]}

    def fit(self, loader, epochs: int) -> list[float]:
        """Adam (lr, betas from the config) over ``epochs`` passes of ``loader``; the mean loss of each epoch."""
        optimiser = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr, betas=tuple(self.cfg.betas))
        self.model.train()
        history = []
        for epoch in range(epochs):
            total, n = 0.0, 0
            for images in tqdm(loader, desc=f"NPGMF logical epoch {epoch + 1}/{epochs}", unit="img", leave=False):
                loss = self.losses(images)["loss"]
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total, n = total + loss.item(), n + 1
            history.append(total / max(n, 1))
            log.info("NPGMF logical: epoch %d/%d, loss %.4f", epoch + 1, epochs, history[-1])
        self.model.eval()
        return history

    @torch.no_grad()
    def maps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) at the logical size -> (B, S, S) Eq. 7 maps."""
        self.model.eval()
        images = images.to(self.device, non_blocking=True)
        features = self.encoder(images)
        out = self.model(features, self.embedding)
        return logical_map(features, out["recon"], self.cfg.image_size)
