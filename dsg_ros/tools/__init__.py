"""What the core never imports: the simulator, the demo harness, evaluation and
plots, benches, the HERO tutorial, g2o files and dataset converters.

Tools may import anything, the core layers and optional dependencies (the
``plots``, ``bench`` and ``ros`` extras) included; ``test/test_layering.py``
checks that nothing imports them back.
"""
