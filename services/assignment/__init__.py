"""The assignment service: picks each screened request's experiment variant with GrowthBook's hashing."""
