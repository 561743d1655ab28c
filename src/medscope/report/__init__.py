"""Reports: plots and the self-contained HTML page of a run."""
