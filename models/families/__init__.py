"""One package per model family, each registering one :class:`~encslim.models.registry.Family` record.

Every family package has the same files for the same parts (like peft's method folders):
``configuration`` (the config class and its checks), ``modeling`` (the modules, parameter names equal
to the checkpoint's), ``processing`` (images and prompts to inputs), ``adapter`` (the
:class:`~encslim.models.adapter.Adapter` the stages use), ``plan`` (the removal plan) and ``tiny``
(a tiny random model), plus what a family needs beyond (Eagle's towers, Cambrian's SVA). Its
``__init__`` is light (no torch): it only registers the record. Only :mod:`encslim.models.registry`
imports these packages; stages reach a family through the registry and its adapter.
"""
