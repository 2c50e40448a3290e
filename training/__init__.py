"""The Lightning side of mixerlab: validated run configs (`training.config`), config composition
(`training.compose`), the LightningModule (`training.task.LMTask`), callbacks, checkpoint IO,
SLURM preemption, the console, and the run itself (`training.run.train`, the entry point behind
``python train.py``).

Imports `arch` and `data`, never `eval`; nothing here is imported for a side effect.
"""
