"""Models: the timm backbone factory and the LightningModules built on it."""
