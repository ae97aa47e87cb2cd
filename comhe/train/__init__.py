"""One training run: its config, the data stream, the step, the loop, checkpoints and records.

==================  ==============================================================================
module              what
==================  ==============================================================================
``config.py``       every run key with its default and unit; typed ``key=value`` overrides
``inputs.py``       untrusted text read within bounds (UTF-8, size, depth, no YAML aliases), numbers in range; no torch
``io_errors.py``    a full or failing disk: the one-line message (exit 2; the run resumes)
``signatures.py``   the registries' option names read from their source, so that config checks need no torch
``setup.py``        device, data, model, regulariser, optimiser, step: all that can fail, before training
``engine.py``       the resumable loop (evaluation, divergence, stop signals, checkpoints)
``interrupt.py``    stop signals: the first Ctrl-C / SIGTERM winds down, a second Ctrl-C stops at once
``steps.py``        one training step: eager or captured in CUDA graphs
``losses.py``       the official loss and cross-entropy
``checkpoint.py``   atomic, checksummed checkpoints
``records.py``      the run directory: config, metrics, final result, metadata (read by the suite)
``progress.py``     the live progress record of a run (``progress.json``), polled by the suite
``tracking.py``     optional TensorBoard logging of the metrics rows (``tensorboard=true``)
``distributed.py``  torchrun / DDP
``seeding.py``      seeds and RNG states
``cpu.py``          threads and subnormal floats on the CPU (measured into ``meta.json``)
``cli.py``          ``python -m comhe.train cfg.yaml key=value ...``
==================  ==============================================================================

This layer imports the library, ``comhe.data`` and ``comhe.models``; never the suite.
"""
from .cli import main  # noqa: F401  (python -m comhe.train; comhe.train.main(argv) from Python)
