"""The three commands. Each module has ``build_parser()``, ``main(argv)`` (raises on errors; used by tests) and
``cli()`` (the console entry point: one line per error, exit codes, ``--debug`` for a traceback)."""
