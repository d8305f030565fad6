"""The library the services import: diffusion maths and UNet, seeding, devices, weights, images."""
