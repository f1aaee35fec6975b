"""usage: token counts from the provider's answer, for metrics, the log and limits."""
