"""NPGMF's global semantic prior (Sec. III-A2): the CLIP text embedding of the category name, re-learned by an FC layer.

The text fed to CLIP's frozen text encoder is the category's name (``breakfast_box`` -> "breakfast
box", in ``npgmf.prompt``). It is fixed per category, so its embedding is computed once (here, at
fit time, or ahead with this module's command) and stored: in the model file, or in an embedding
file that a user passes instead of a CLIP checkpoint. The text tower is never needed at inference.

CLIP variant: open_clip ``ViT-B-32-quickgelu`` with OpenAI's weights (the paper names CLIP "proposed
by OpenAI" and no variant; ViT-B/32 is the model OpenAI's own ``clip`` package loads by default).
Its text embedding has 512 values; we L2-normalise it, as CLIP's similarity uses it.

A trainable fully connected layer maps the embedding to ``prior_channels`` values, broadcast over
each level's map (the paper "upsamples" the 1 x 1 context to each size: a constant map).

Embedding files: safetensors, one float32 vector per category name, the CLIP model name in the
metadata. Make one (needs open-clip-torch and a local checkpoint, requirements-npgmf.txt)::

    python -m usad.models.npgmf.prior --clip-weights open_clip_model.safetensors \\
        --categories breakfast_box juice_bottle pushpins screw_bag splicing_connectors --out loco_text.safetensors
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
import torch.nn as nn

from usad.core.artifacts import atomic_write
from usad.core.backbones import first_line, load_state_file
from usad.core.errors import UsadError

log = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "ViT-B-32-quickgelu"
CLIP_HELP = ("a local open_clip state dict of that model (.safetensors / .bin), e.g. open_clip_model.safetensors of "
             "the Hugging Face repository timm/vit_base_patch32_clip_224.openai, copied from a machine with network")


class PriorError(UsadError):
    """No usable text embedding for the category: missing CLIP checkpoint or embedding file, unknown category."""


def category_text(category: str, template: str = "{}") -> str:
    """The caption fed to CLIP: the category's folder name as words, in ``template``."""
    return template.format(category.replace("_", " ").replace("-", " ").strip())


def require_open_clip(key: str):
    try:
        import open_clip
    except ImportError:
        raise PriorError(f"{key} needs open-clip-torch to compute the CLIP text embedding: pip install -r "
                         f"requirements-npgmf.txt, or pass npgmf.text_embedding=FILE (a stored embedding)") from None
    return open_clip


def clip_text_embeddings(texts: list[str], model_name: str, weights: str | Path | None,
                         model_kwargs: dict | None = None, key: str = "npgmf.clip") -> torch.Tensor:
    """(N, D) L2-normalised CLIP text embeddings of ``texts``, from a local open_clip checkpoint (no download)."""
    if weights is None:
        raise PriorError(f"{key}.weights is not set and no stored text embedding was given: pass --set "
                         f"{key}.weights=FILE ({CLIP_HELP}), or --set npgmf.text_embedding=FILE")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise PriorError(f"{key}.weights = {str(path)!r} does not exist; give {CLIP_HELP}, or pass "
                         f"--set npgmf.text_embedding=FILE (a stored embedding)")
    open_clip = require_open_clip(key)
    try:
        model = open_clip.create_model(model_name, pretrained=None, **(model_kwargs or {}))
    except Exception as e:
        raise PriorError(f"{key}.model = {model_name!r} with {key}.model_kwargs = {model_kwargs or {}} does not build "
                         f"an open_clip model: {first_line(e)}") from None
    try:
        state = load_state_file(path)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        model.load_state_dict(state)
    except Exception as e:
        raise PriorError(f"{key}.weights = {str(path)!r} is not an open_clip state dict of {model_name!r} "
                         f"({first_line(e)}); give {CLIP_HELP}") from None
    tokenizer = open_clip.get_tokenizer(model_name)
    model.eval()
    with torch.no_grad():
        return model.encode_text(tokenizer(texts), normalize=True).float()


def read_embedding_file(path: str | Path, category: str, key: str = "npgmf.text_embedding") -> torch.Tensor:
    """The (D,) embedding stored for ``category`` in a safetensors embedding file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PriorError(f"{key} = {str(path)!r} does not exist; make one with python -m usad.models.npgmf.prior")
    try:
        from safetensors.torch import load_file

        table = load_file(str(path), device="cpu")
    except Exception as e:
        raise PriorError(f"{key} = {str(path)!r} is not a safetensors embedding file: {first_line(e)}") from None
    if category not in table:
        raise PriorError(f"{key} = {str(path)!r} has no embedding for category {category!r} (it has "
                         f"{', '.join(sorted(table)) or 'none'}); add it with python -m usad.models.npgmf.prior")
    vector = table[category]
    if vector.ndim != 1 or not torch.isfinite(vector).all():
        raise PriorError(f"{key} = {str(path)!r}: the embedding of {category!r} is not a finite vector")
    return vector.float()


def write_embedding_file(path: str | Path, embeddings: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tensors = {name: v.detach().float().contiguous() for name, v in embeddings.items()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


class GlobalPrior(nn.Module):
    """FC layer on the fixed text embedding; its output broadcast to every level's map size."""

    def __init__(self, text_dim: int, channels: int):
        super().__init__()
        self.fc = nn.Linear(text_dim, channels)

    def forward(self, embedding: torch.Tensor, batch: int, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        g = self.fc(embedding)[None, :, None, None]  # (1, P, 1, 1)
        return [g.expand(batch, -1, h, w) for h, w in sizes]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Store the CLIP text embeddings of category names (NPGMF's prior).")
    parser.add_argument("--clip-weights", required=True, help=CLIP_HELP)
    parser.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, help="open_clip model name (default %(default)s)")
    parser.add_argument("--categories", nargs="+", required=True, help="category folder names, e.g. breakfast_box")
    parser.add_argument("--prompt", default="{}", help="caption template (default: the name alone)")
    parser.add_argument("--out", required=True, help="the embedding file to write (.safetensors)")
    args = parser.parse_args(argv)
    if not Path(args.clip_weights).expanduser().is_file():
        raise PriorError(f"--clip-weights {args.clip_weights!r} does not exist; give {CLIP_HELP}")
    texts = [category_text(c, args.prompt) for c in args.categories]
    vectors = clip_text_embeddings(texts, args.clip_model, args.clip_weights)
    write_embedding_file(args.out, dict(zip(args.categories, vectors)),
                         {"clip_model": args.clip_model, "prompt": args.prompt})
    log.info("wrote %d embeddings (%d values each) to %s", len(texts), vectors.shape[1], args.out)
    return 0


if __name__ == "__main__":
    import sys

    from usad.core.cli import run_cli

    sys.exit(run_cli(main))
