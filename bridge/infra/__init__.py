"""Infrastructure: the cloud client and its HTTP transport, the journal, metrics, logs, TLS."""
