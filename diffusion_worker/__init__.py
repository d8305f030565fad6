"""Diffusion worker: loads the UNet once and runs sampling jobs from the queue."""
