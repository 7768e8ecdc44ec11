"""cleanup: what happens to a message between end-of-data and the queue (Postfix's cleanup(8))."""
