"""spend: what each request cost in dollars, from its usage and its model's price."""
