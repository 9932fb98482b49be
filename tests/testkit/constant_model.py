"""A bundle copy whose network predicts one class everywhere: a deterministic, instant model for tests that need
"nothing found" or "everything is spleen" without training."""

from __future__ import annotations

import shutil
from pathlib import Path


def constant_output_bundle(source: Path, dest: Path, background: float, spleen: float) -> Path:
    """Copy ``source``'s configs and scripts to ``dest`` with weights whose output logits are constant
    (zero convolutions, output-layer bias ``[background, spleen]``)."""
    import torch
    from monai.bundle import ConfigParser

    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("models", "__pycache__"))
    parser = ConfigParser()
    parser.read_config(str(dest / "configs" / "inference.json"))
    net = parser.get_parsed_content("network_def")
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()
                    if module.bias.shape[0] == 2:  # the output layer
                        module.bias.copy_(torch.tensor([background, spleen]))
    (dest / "models").mkdir()
    torch.save(net.state_dict(), dest / "models" / "model.pt")
    return dest
