"""spend: what requests cost, the spend ledger and its report."""
