"""Cleanup passes: constant folding, canonicalization, common-subexpression and dead-code
elimination."""
