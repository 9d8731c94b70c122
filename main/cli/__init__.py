"""The entry points behind ``baseline.py``, ``finetune.py`` and ``test.py`` (and the ``adapmtl-*`` commands).

Each module has ``main(argv) -> int``; the root scripts only call it through ``main.errors.cli_main``, so the
package can be installed (``pip install -e .``) and imported by tests without touching ``sys.path``.
``pruning.py`` lives beside the methods it runs (``SOTA_methods.cli``).
"""
