"""`mobius ablate`: the paper's ablations (Tab. 3, Tab. 14 / Sec. 8.5, Fig. 4 / Tab. 15) side by side.

    spec.py           the variants of each experiment and the three scales (frozen dataclasses)
    data.py           the train/test data: given with --data or generated at the scale's sizes
    runs.py           one resumable training run per distinct variant config
    decoder_flops.py  decoder FLOPs of a frame from the queries each layer kept
    evaluate.py       AP, ECE and decoder FLOPs of a model at one pruning setting (cached)
    pipeline.py       train -> FLOPs -> evaluate -> the results dict
    claims.py         the paper's claims checked against the results
    plots.py          PNG plots;  report.py  ABLATIONS.md and ablations.json
    command.py        the CLI
"""
