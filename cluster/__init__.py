"""The fleet file (``models.yaml``): its schema and the fingerprints that bind artifacts to a fleet.

Pydantic and yaml only: never Ray, never the engines, so a fleet file is checked anywhere.
"""
