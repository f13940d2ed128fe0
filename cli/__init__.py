"""fedquilt.cli."""
