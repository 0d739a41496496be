"""Studies: the library side of the experiment binaries.

Each module has `train_and_evaluate(config, workdir)`, which trains (or resumes)
the study's model, runs every analysis of the study through toymech's API, and
writes the workdir (see `toymech.experiment`): config.json, metrics.jsonl,
checkpoints, results.json, figures/ and report.html. `experiments/<study>.py`
only parses flags and calls it.
"""
