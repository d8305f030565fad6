"""DDPM/DDIM diffusion: schedules, forward process and loss, UNet, samplers, loadable pipeline."""
