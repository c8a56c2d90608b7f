"""The 5-minute demo: rainy photos made from scikit-image's bundled images (:mod:`.data`), a small DRSformer
trained on them on the CPU, the result scored and pictured (:mod:`.pictures`), all in :func:`.run.run_demo`."""
