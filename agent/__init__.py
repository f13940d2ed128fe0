"""fedquilt.agent."""
