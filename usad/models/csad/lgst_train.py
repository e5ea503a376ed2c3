"""Training of the LGST students (EfficientAD's recipe as CSAD's code runs it; AeCSAD's losses and schedule by config).

Each iteration takes a batch of training images (a new random order every epoch, the last batch of an epoch
smaller when the count does not divide), one colour-jittered copy of each (one of brightness / contrast /
saturation, factor in [0.8, 1.2], the code's augmentation of the global student's input) and, with the penalty on,
one ImageNet-like image (resized to twice the size, grey with probability 0.3, centre crop). Adam with weight
decay; the learning rate is divided by 10 after 95% of the iterations (CSAD) or annealed by a cosine (AeCSAD).
The last iteration's weights are kept (the code keeps the best *test-set* AUROC, every 1,000 iterations).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torchvision import transforms
from tqdm import tqdm

from usad.core.errors import UsadError
from usad.models.csad.lgst_losses import lgst_losses

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".JPEG", ".JPG", ".PNG", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PenaltyImagesError(UsadError, FileNotFoundError):
    """The ImageNet-like folder of penalty images is missing or empty."""


def penalty_files(folder, key: str) -> list[Path]:
    """Every image file under ``folder`` (the config key ``key``), sorted; a clear error when there is none."""
    if folder is None:
        raise PenaltyImagesError(f"{key} is not set: the local student's penalty needs a local folder of "
                                 f"ImageNet-like images (e.g. ImageNet's train folder or tiny-imagenet); set "
                                 f"--set {key}=/path/to/images, or switch the penalty off with "
                                 f"--set {key.rsplit('.', 1)[0]}.penalty=false")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise PenaltyImagesError(f"{key} = {str(root)!r} is not a folder; give a local folder of ImageNet-like images")
    files = sorted(p for p in root.rglob("*") if p.suffix in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise PenaltyImagesError(f"{key} = {str(root)!r} holds no image files ({', '.join(IMAGE_SUFFIXES[:5])}); "
                                 f"give a folder of ImageNet-like images")
    return files


class PenaltyImages(torch.utils.data.Dataset):
    def __init__(self, files: list[Path], size: int, grey_p: float):
        self.files = files
        self.transform = transforms.Compose([
            transforms.Resize((2 * size, 2 * size)), transforms.RandomGrayscale(grey_p), transforms.CenterCrop(size),
            transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB"))


def endless(loader):
    while True:
        yield from loader


def batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless batches of indices: a new random order every epoch, the last batch of an epoch possibly smaller."""
    while True:
        order = torch.randperm(n, generator=generator)
        yield from order.split(batch_size)


JITTERS = ("brightness", "contrast", "saturation")


def colour_jitter(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """One of brightness / contrast / saturation per image, factor uniform in [1 - s, 1 + s]; float [0, 1] images."""
    import torchvision.transforms.functional as TF

    out = []
    for img in images:
        kind = JITTERS[int(torch.randint(len(JITTERS), (1,), generator=generator))]
        factor = float(torch.empty(1).uniform_(1 - strength, 1 + strength, generator=generator))
        out.append(getattr(TF, f"adjust_{kind}")(img, factor))
    return torch.stack(out)


def normalise(images01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=images01.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images01.device).view(1, 3, 1, 1)
    return ((images01 - mean) / std).contiguous()


def make_optimizer(lgst, s, iterations: int):
    params = [p for m in lgst.students() for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    if s.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, iterations), eta_min=s.min_lr)
    else:  # "step": x gamma after step_fraction of the iterations
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, int(s.step_fraction * iterations)),
                                                gamma=s.step_gamma)
    return opt, sched


def train_step(lgst, s, encode, opt, img: torch.Tensor, aug: torch.Tensor, pen: torch.Tensor | None) -> dict:
    """One optimisation step from normalised image / jittered / penalty batches; ``encode(x) -> (f2, f3)``.

    The three inputs go through the backbone and the local student as one batch (convolutions only: the same
    outputs as separate passes); the global student sees the jittered images (its dropout draws from torch's
    global generator, nothing else here does).
    """
    b = img.shape[0]
    with torch.no_grad():
        f2, f3 = encode(torch.cat([img, aug]))
        t = lgst.teacher_features(f2, f3)
    t_img, t_aug = t[:b], t[b:]
    student_in = torch.cat([img, pen, aug]) if pen is not None else torch.cat([img, aug])
    st, head = lgst.local(student_in)
    ae = lgst.global_(aug)
    st_pen = st[b:b + pen.shape[0]] if pen is not None else None
    losses = lgst_losses(s, t_img, st[:b], st_pen, t_aug, ae, head[-b:])
    opt.zero_grad(set_to_none=True)
    losses["total"].backward()
    opt.step()
    return {k: float(v.detach()) for k, v in losses.items()}


def train_lgst(lgst, s, encode, images: torch.Tensor, penalty: list[Path] | None, seed: int, num_workers: int = 0,
               progress: bool = True) -> list[dict]:
    """Train the students for ``s.iterations`` steps; ``images``: uint8 (N, 3, S, S) on the device."""
    device = images.device
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    order = batches(images.shape[0], s.batch_size, gen)
    pen_iter = None
    if penalty is not None:
        loader = torch.utils.data.DataLoader(PenaltyImages(penalty, images.shape[-1], s.penalty_grey_p),
                                             batch_size=s.penalty_batch_size, shuffle=True, num_workers=num_workers,
                                             generator=torch.Generator().manual_seed(seed + 1), drop_last=False)
        pen_iter = endless(loader)
    opt, sched = make_optimizer(lgst, s, s.iterations)
    lgst.train()
    history = []
    bar = tqdm(range(s.iterations), desc="LGST", disable=not progress, mininterval=5)
    for it in bar:
        idx = next(order).to(device)
        raw = images[idx].float().div_(255)
        img = normalise(raw)
        aug = normalise(colour_jitter(raw, s.jitter, gen).clamp_(0, 1))
        pen = next(pen_iter).to(device) if pen_iter is not None else None
        losses = train_step(lgst, s, encode, opt, img, aug, pen)
        sched.step()
        history.append(losses)
        if it % 100 == 0:
            bar.set_postfix(total=f"{losses['total']:.4f}")
        if not all(map(lambda v: v == v and abs(v) != float("inf"), losses.values())):
            raise UsadError(f"LGST training diverged at iteration {it} (losses {losses}); lower lgst.lr")
    lgst.eval()
    return history
