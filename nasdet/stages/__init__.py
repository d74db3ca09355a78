"""One module per stage of a run: baseline, pretrain, search, tune, export, report. Each reads and writes
the work dir through ``nasdet.workdir`` and calls the library; none imports another (``common`` holds
what several share). ``nasdet.pipeline`` orders them."""
