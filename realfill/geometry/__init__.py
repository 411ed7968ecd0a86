"""Geometry of the known region: feature matchers, and what the correspondences between a target's known
pixels and a reference fix (epipolar geometry, planes). Stitch, ranking and reference picking share it."""
