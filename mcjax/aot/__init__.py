"""Ahead-of-time compilation for TPU slices from a machine without one: topology names,
the steps from abstract shapes, the compiled programs' memory, collectives and FLOPs."""
