"""One run: pipeline.py (run_once: lease, snapshots, delivery, record, prune, alerts),
deliver.py (one destination's pairs), report.py (what the run did), alerts.py."""
