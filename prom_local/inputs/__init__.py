"""Input files other than prom-local's own JSONL: prometheus-eval's benchmark data files.

Above judging/: readers turn files into the records judging/ defines."""
