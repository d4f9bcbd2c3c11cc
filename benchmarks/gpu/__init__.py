"""The GPU step-cost run: ``benchmarks/gpu/run.sh`` (see :mod:`benchmarks.gpu.bench`)."""
