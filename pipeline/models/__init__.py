"""Model code: the 3D UNet, the global encoder, the CLIP and VAE wrappers, weight loading."""
