"""Stateless ops, by family. Imported as ``import tinygnet.functional as F``.

Names and arguments follow ``torch.nn.functional``. Each op is a Function
subclass (forward and backward side by side) plus the lowercase function
you call.
"""
