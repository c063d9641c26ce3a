"""The capture service: scheduling, de-duplication, the journal rule (outbox), seen through ports.py."""
