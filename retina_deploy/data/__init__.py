"""Datasets: COCO-format loading, synthetic shapes, and the training/evaluation torch Dataset."""
