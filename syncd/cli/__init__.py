"""The command line: main.py parses and dispatches (exit codes come from errors.py),
commands/ holds what each command does, progress.py and logs.py what it shows.
The pipeline imports nothing from here (it reports progress through model.Progress)."""
