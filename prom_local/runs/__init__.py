"""File runs: score a file into a results file (resume, durable append), read results back, and size
the work before loading. Where the records are graded (a local Judge, a server, a Ray cluster) is
a judging.backend.Backend, chosen in backends/."""
