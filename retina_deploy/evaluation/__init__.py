"""COCO evaluation: the metrics and the loop that scores any Detector on a dataset."""
