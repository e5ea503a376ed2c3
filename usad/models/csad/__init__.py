"""CSAD (component segmentation for logical anomaly detection) and AeCSAD (CSAD with a self-attention global student).

One concept a module: ``pseudo_labels`` / ``grounding`` (semantic pseudo-labels), ``segmentor`` / ``seg_losses`` /
``lsa`` (component segmentation), ``histogram`` (patch histogram), ``lgst`` / ``lgst_losses`` / ``lgst_train``
(local-global student-teacher), ``fusion`` (trimmed z-score fusion), ``method`` (the ``usad.compare`` adapters).
"""
