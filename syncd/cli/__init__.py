"""The command line: main.py parses and dispatches (exit codes come from errors.py),
commands/ holds what each command does, progress.py and logs.py what it shows.
Nothing here is imported by the pipeline except progress.py's small Task interface."""
