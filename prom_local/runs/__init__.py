"""Running work: score a file into a results file (resume, durable append), read results back, size
the work before loading, grade against a remote `prom-local serve`, and `ray/` for `score --ray`."""
