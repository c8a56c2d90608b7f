"""``drsformer serve``: a local web page to derain photos from a browser, on this machine's CPU or GPU, through
the same code as ``drsformer derain`` (:mod:`.server` runs it, :mod:`.app` is the page and its API,
:mod:`.jobs` the queue and its one worker, :mod:`.uploads` the checks of an upload's content)."""
