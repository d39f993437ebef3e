"""nfgen: normalizing-flow image generators (RealNVP and Glow)."""

from nfgen.config import Config, load_config
from nfgen.model import ImageFlow, build_model

__version__ = "0.1.0"
__all__ = ["Config", "ImageFlow", "__version__", "build_model", "load_config"]
