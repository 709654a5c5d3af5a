"""Getting a change to a destination: sender.py (pace, concurrency, retry, classify an
answer) and destinations/ (one module per service, behind base.py's interface)."""
