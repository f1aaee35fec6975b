"""keys: gateway keys, their rate limits and budgets (counted in Redis)."""
