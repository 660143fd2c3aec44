"""The fleet file (``models.yaml``): its schema, the fingerprints that bind artifacts to a fleet, the plan
of what runs where, and the configs that launch a cluster for it.

Pydantic and yaml only: never Ray, never the engines, so a fleet file is checked and planned anywhere.
"""
