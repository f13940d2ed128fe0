"""fedquilt.proto."""
