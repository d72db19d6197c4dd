"""Memory planning: what a model needs on each device, computed from its architecture before loading it.

Pure functions with explicit arguments (no config tree): ``skeleton`` builds the model on the meta device,
``params`` splits it into placeable units and counts them, ``memory`` prices the weights for a dtype or a
bitsandbytes mode, ``kv`` the KV cache and activations, ``training`` the trainable state, ``devices`` places
the units on GPUs, ``suggest`` says what to change when it does not fit, ``plan`` puts them together.
``inputs`` is the one place that reads a run config into those arguments.
"""
