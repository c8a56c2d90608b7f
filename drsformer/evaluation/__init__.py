"""Scoring sets of images: one function and one result type (:mod:`.scores`) for ``test``, ``evaluate``,
validation, the demo and the benchmark scripts; the tables, the JSON and the HTML report (:mod:`.report`)."""
