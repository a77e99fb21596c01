"""runtime: see the issue tracker; filled in by later work."""
