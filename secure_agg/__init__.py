"""fedquilt.secure_agg."""
