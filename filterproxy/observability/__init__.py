"""What the gateway tells its operators: Prometheus metrics, the access log, OpenTelemetry
spans and the memory report."""
