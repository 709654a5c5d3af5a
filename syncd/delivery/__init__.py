"""The whole send path of a run: pairs.py (each destination's pairs, page by page), calls.py
(grouped calls), bulk.py (mass updates), session.py (what they share), sender.py (pace,
concurrency, retry, classify an answer), wire.py (requests and verdicts, without the HTTP
client) and destinations/ (one class per type, behind base.py's interface)."""
