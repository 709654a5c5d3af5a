"""The commands beyond running: status.py (`status`), operator.py (`plan`, `resync`,
`failures`, `retry`, `history`, `approve`), check.py (`check`)."""
