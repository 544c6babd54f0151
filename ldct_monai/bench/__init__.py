"""Benchmark engines of ``ldct-monai bench manifest|train|denoise``: each measures against a reference run in
the same process, so that machine noise cancels in the ratios. Shared timing, FLOP counting and the
convolution peak are in :mod:`ldct_monai.bench.timing`; the commands in ``ldct_monai/commands/bench_*.py``
only parse options and print."""
