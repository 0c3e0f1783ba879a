"""What this install and machine can do: `doctor` (read, not loaded) and `bench` (a short measured run).

Above runs/ and reports/: diagnostics use the same paths a real run takes."""
