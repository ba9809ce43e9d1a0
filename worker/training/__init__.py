"""The training pipeline: the task (claim, train, record), the engine (fit, train_one_epoch, evaluate) built from a
JobSpec, data, checkpoints, and the reporting of losses and epochs under the job's lease."""
