"""`syncd run`: the scheduler and what runs beside it: metrics and the HTTP endpoints,
the status page, the health probes, sd_notify, signal handling."""
