#!/usr/bin/env python
"""Pretrain a language model composed from blocks: ``python train.py model=gla data=mqar``.

Hydra composes ``conf/`` (any key can be overridden on the command line; ``-m`` sweeps); the run
itself is `training.run`: validate everything, then train with Lightning and write one run
directory (``config.yaml``, ``tensorboard/``, ``checkpoints/last.ckpt``, ``metrics.json``).
"""

from training.run import main

if __name__ == "__main__":
    main()
