"""What is trained: each model of the study as data (specs), how long it trains (schedule), how the
protocol departs from the paper's (deviations), and each notebook's list of jobs (jobs). Imports
only mmlib.data, mmlib.engine's rules and mmlib.presets: nothing of run/ or results/."""
