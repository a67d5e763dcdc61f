"""The neutral bottom of fedray: configuration errors and seeded random streams.

Everything may import `common`; it imports nothing of fedray.
"""
