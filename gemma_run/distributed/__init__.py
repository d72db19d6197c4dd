"""Several processes: the launch (torchrun / the deepspeed launcher), the worker entry, tensor parallel."""
