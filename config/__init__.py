"""Settings, paths and the on-disk configuration of blindkey."""
