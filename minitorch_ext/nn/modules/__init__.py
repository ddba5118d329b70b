"""Drop-in modules."""
__all__ = []
