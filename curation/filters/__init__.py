"""Filter steps: each module defines Filter subclasses and registers them on import."""
