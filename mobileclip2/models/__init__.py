"""Model families that upstream timm/open_clip may lack: one module per family."""
