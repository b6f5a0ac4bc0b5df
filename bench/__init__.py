"""`make bench`: real load generators against the sidecar on loopback (entry point: bench.run)."""
