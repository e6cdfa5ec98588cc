"""PyTorch + Lightning implementation of the PtychoPINN grid-lines study."""
