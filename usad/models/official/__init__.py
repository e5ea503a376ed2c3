"""Table 1 baselines run from their official code: SimpleNet, RD++, CKAAD, ISSTAD (``tools/official_harness.py``)."""
