"""The leaf core: the event schema, settings, the error root and the store interface.

Everything in finsent imports from here; nothing here imports anything else of finsent (the
layer contract in ``pyproject.toml`` enforces it), like faust's ``faust/types`` or river's
``river/base``.
"""
