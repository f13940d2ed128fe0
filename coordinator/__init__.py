"""fedquilt.coordinator."""
