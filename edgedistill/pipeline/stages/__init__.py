"""One thin module per stage over the libraries; each imports only libraries and
:mod:`edgedistill.pipeline.context`. :mod:`edgedistill.pipeline.run` orders them."""
