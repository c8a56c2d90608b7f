"""Paired image data: file I/O, datasets, samplers, benchmark preparation and synthetic rain."""
