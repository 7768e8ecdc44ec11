"""The mail queue: partitions of append-only segment files (see partition.py for the layout)."""
