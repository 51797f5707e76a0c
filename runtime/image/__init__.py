"""Pixels in and out: image files, the one preprocessing definition, drawing detections."""
