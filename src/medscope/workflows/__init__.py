"""What a user asks for, composed from the rooms below: a training run (fit, calibrate, evaluate,
report), cross-validation, the evaluation of a run or an ensemble, a comparison of runs, the audit
of a dataset and a run. ``api`` and the CLI call these; nothing below imports them."""
