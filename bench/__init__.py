"""Throughput benchmark and soak test of the real bridge process (`make bench`, `make soak`)."""
