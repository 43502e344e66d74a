"""The commands (glora-train, -search, -export, -report, -data). Each module has ``build_parser()`` (its options: a
:class:`~glora.app.options.Command`, or argparse for glora-data), ``main(argv)`` (raises on errors; used by tests)
and ``cli()`` (the console entry point: one line per error, exit codes, ``--debug`` for a traceback)."""
