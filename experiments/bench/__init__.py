"""Benchmarks of fedmtl on Flower: they measure, print, and write
docs/PERFORMANCE.md; none of them is a timed test. `python -m experiments.bench`.

Sections: `overhead` (Flower vs the bare loop, Flower's own cost per call and per wave, the
simulation knobs), `scale` (1000 clients, memory, time per round vs clients sampled),
`aggregation` (server aggregation vs a memory-bandwidth reference), `communication` (bytes
per round, compression), `deployment` (loopback deployment vs simulation), `gpu` (the
training step on CPU and CUDA, fedmtl vs a bare PyTorch loop; runs with PyTorch alone).
"""
