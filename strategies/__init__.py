"""fedquilt.strategies."""
