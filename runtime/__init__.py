"""Torch-free inference: preprocessing, backends and the Detector.

Never import torch here (tests run this package with torch made unimportable).
"""
