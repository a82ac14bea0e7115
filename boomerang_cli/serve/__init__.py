"""`boomerang serve`: every size of a family from one resident copy of the weights (SPEC section 9)."""
