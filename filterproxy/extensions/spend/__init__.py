"""spend: what each request cost in dollars (from its usage and its model's price), the
spend ledger per day, and the report made of it."""
