"""``python -m launcher.tools.sweep SPEC``: one trial's process (``trial.trial_main``)."""

import sys

from launcher.tools.sweep.trial import trial_main

if __name__ == "__main__":
    sys.exit(trial_main(sys.argv[1]))
