"""`score --ray`: the cluster (joining, placing actors), the engine worker inside an actor, and the
driver that feeds them and writes one results file."""
