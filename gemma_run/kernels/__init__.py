"""GPU kernels gemma-run ships, each with a reference path in plain torch that defines what it computes."""
