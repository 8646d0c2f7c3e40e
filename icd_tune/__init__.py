"""Invariant Consistency Distillation tuning platform."""
