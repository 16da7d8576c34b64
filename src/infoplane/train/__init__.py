"""Training and capture (torch): datasets, models, capture schedules, the training loop.

torch is imported by the modules that need it, never by ``import infoplane.train``.
"""
