"""Classifiers and segmentation nets that expose their map-producing features."""
