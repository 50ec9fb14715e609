"""Developer scripts, run from the repository root as modules (``python -m scripts.gpu_check``,
``python -m scripts.bench.<name>``): the repository root is then on ``sys.path``, so they import
``launcher``, ``strategies`` and each other without editing it."""
