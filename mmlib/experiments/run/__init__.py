"""How a job runs: the study folder (study), where its jobs train (executors), each notebook's
experiment (experiments), `mmlib study`'s notebook runner (runner) and `mmlib joint` (joint).
Reads plan/ and results/; nothing below imports it."""
