"""The master process and its workers (Postfix's master(8))."""
