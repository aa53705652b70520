"""LightningCLI entry point: any LightningModule and datamodule, callbacks from the config.

    python examples/cli/main.py fit --config examples/cli/stepwise.yaml
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


def cli_main(args: Sequence[str] | None = None, run: bool = True) -> LightningCLI:
    return LightningCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                        args=args, run=run, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    cli_main()
