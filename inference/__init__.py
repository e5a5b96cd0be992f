"""Pixels to numbers: decoding, preprocessing, networks, measurements, the phantom generator."""
