"""NPGMF (../shared/papers/npgmf.txt): normality-prior-guided multi-semantic fusion, rebuilt from its paper.

Logical module (logical.py): frozen ResNet encoder (encoder.py), RD4AD's one-class embedding
(oce.py), per-level VQ codebooks fed by an atrous block (vq.py, atrous.py), a CLIP text prior
(prior.py), and a de-ResNet decoder fusing them through Uformer's LeWin blocks (decoder.py,
lewin.py), trained with Eq. 3-6 (losses.py). Structural module (structural.py): the project's
PatchCore on ResNeXt-101. Fusion, Eq. 11 (fusion.py). Adapter for usad.compare: method.py.
"""
