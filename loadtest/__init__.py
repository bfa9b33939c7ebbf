"""Load and fault tools: the bank-invariant fault runner, benchmarks, Locust."""
